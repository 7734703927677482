"""Report figures (PNG) for the Snakemake report.

Every ``plot_*`` function reads plain files / arrays / tables, writes one PNG and returns its path.
This module never imports the project's model code (checkpoints are read with ``torch.load`` only).

Colours follow the Okabe-Ito palette (colour-blind safe).
"""

from __future__ import annotations

import math
import statistics
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from pancreas_mtl.benchmarks import learning
from pancreas_mtl.benchmarks.rows import BENCHMARK_ROWS
from pancreas_mtl.data.labels import BACKGROUND_LABEL, LESION_LABEL, SUBTYPES

DPI = 120

#: Okabe-Ito palette
OKABE_ITO = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky_blue": "#56B4E9",
    "bluish_green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish_purple": "#CC79A7",
    "grey": "#7F7F7F",
}
SUBTYPE_COLOURS = (OKABE_ITO["blue"], OKABE_ITO["orange"], OKABE_ITO["reddish_purple"])
REGION_COLOURS = {"whole": OKABE_ITO["bluish_green"], "lesion": OKABE_ITO["vermillion"]}
PANCREAS_COLOUR = OKABE_ITO["sky_blue"]
LESION_COLOUR = OKABE_ITO["orange"]
#: the benchmark's rows, in its order, by name
BENCHMARK_ROW = {row.name: row for row in BENCHMARK_ROWS}

CT_LEVEL_HU = 40.0
CT_WIDTH_HU = 400.0


def _finish(fig: plt.Figure, out_png: str | Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, facecolor="white")
    plt.close(fig)
    return out


def _as_float_array(values) -> np.ndarray:
    if values is None:
        return np.zeros(0)
    out = []
    for v in values:
        try:
            out.append(float(v) if v is not None else math.nan)
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, dtype=float)


# ---------------------------------------------------------------------------------------------- 1 training curves
def load_stage_logging(checkpoint_path: str | Path) -> dict:
    """The per-epoch logging dict (``checkpoint["logging"]``) of an nnU-Net checkpoint."""
    import torch

    checkpoint = torch.load(str(checkpoint_path), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, Mapping) or "logging" not in checkpoint:
        raise ValueError(f"{checkpoint_path}: not an nnU-Net checkpoint (no 'logging' entry)")
    return dict(checkpoint["logging"])


def _epoch_seconds(log: Mapping) -> np.ndarray:
    start = _as_float_array(log.get("epoch_start_timestamps"))
    end = _as_float_array(log.get("epoch_end_timestamps"))
    n = min(len(start), len(end))
    seconds = end[:n] - start[:n]
    return seconds[np.isfinite(seconds) & (seconds >= 0)]


def _plot_series(ax, log: Mapping, key: str, label: str, colour: str, *, sparse: bool = False, **kwargs) -> bool:
    """Plot ``log[key]`` against the epoch index; ``sparse`` series are drawn through measured epochs only."""
    y = _as_float_array(log.get(key))
    if y.size == 0:
        return False
    x = np.arange(y.size)
    keep = np.isfinite(y)
    if not keep.any():
        return False
    if sparse:
        ax.plot(x[keep], y[keep], marker="o", markersize=4, color=colour, label=label, **kwargs)
    else:
        ax.plot(x, y, color=colour, label=label, **kwargs)
    return True


def plot_training_curves(stage_logs: dict[str, dict], out_png: str | Path) -> Path:
    """Losses, validation metrics and learning rate per epoch, one column per training stage."""
    if not stage_logs:
        raise ValueError("plot_training_curves: no stages given")
    names = list(stage_logs)
    ncols = len(names)
    fig, axes = plt.subplots(
        3, ncols, figsize=(5.2 * ncols + 2.6, 9.0), sharey="row", squeeze=False, layout="constrained"
    )
    legend_handles: list[dict[str, object]] = [{}, {}, {}]

    def collect(row: int, ax) -> None:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend_handles[row].setdefault(label, handle)

    for col, name in enumerate(names):
        log = stage_logs[name] or {}
        ax_loss, ax_metric, ax_lr = axes[:, col]

        # --- losses
        _plot_series(ax_loss, log, "train_losses", "train loss (total)", OKABE_ITO["blue"])
        _plot_series(ax_loss, log, "val_losses", "validation loss", OKABE_ITO["vermillion"])
        _plot_series(ax_loss, log, "train_seg_loss", "train segmentation loss", OKABE_ITO["sky_blue"], linestyle="--")
        _plot_series(
            ax_loss, log, "train_cls_loss", "train classification loss", OKABE_ITO["reddish_purple"], linestyle=":"
        )
        collect(0, ax_loss)

        # --- validation metrics
        _plot_series(
            ax_metric,
            log,
            "mean_fg_dice",
            "pseudo Dice (patch validation, per epoch)",
            OKABE_ITO["grey"],
            alpha=0.35,
            linewidth=1,
        )
        _plot_series(ax_metric, log, "ema_fg_dice", "EMA pseudo Dice (patch validation)", OKABE_ITO["black"])
        _plot_series(
            ax_metric,
            log,
            "full_val_whole_dice",
            "whole-pancreas Dice (full validation)",
            OKABE_ITO["bluish_green"],
            sparse=True,
        )
        _plot_series(
            ax_metric,
            log,
            "full_val_lesion_dice",
            "lesion Dice (full validation)",
            OKABE_ITO["vermillion"],
            sparse=True,
        )
        _plot_series(
            ax_metric,
            log,
            "full_val_macro_f1",
            "subtype macro-F1 (full validation)",
            OKABE_ITO["reddish_purple"],
            sparse=True,
        )
        _plot_series(
            ax_metric,
            log,
            "full_val_combined",
            "combined score (full validation)",
            OKABE_ITO["blue"],
            sparse=True,
            linestyle="--",
        )
        ax_metric.set_ylim(-0.02, 1.02)
        collect(1, ax_metric)

        # --- learning rate (+ classification-loss weight on a second axis)
        _plot_series(ax_lr, log, "lrs", "learning rate", OKABE_ITO["blue"])
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax_lr.set_ylim(bottom=0)
        collect(2, ax_lr)
        weights = _as_float_array(log.get("cls_loss_weight"))
        if weights.size and np.isfinite(weights).any():
            twin = ax_lr.twinx()
            _plot_series(
                twin,
                log,
                "cls_loss_weight",
                "classification-loss weight (right axis)",
                OKABE_ITO["orange"],
                linestyle="--",
            )
            top = np.nanmax(weights)
            twin.set_ylim(0, top * 1.1 if top > 0 else 1)
            twin.set_ylabel("classification-loss weight")
            collect(2, twin)

        n_epochs = max((len(v) for v in log.values() if isinstance(v, (list, tuple, np.ndarray))), default=0)
        seconds = _epoch_seconds(log)
        subtitle = f"{n_epochs} epochs"
        if seconds.size:
            subtitle += f", median {np.median(seconds):.1f} s/epoch"
        ax_loss.set_title(f"{name}\n({subtitle})", fontsize=11, fontweight="bold")
        for ax in (ax_loss, ax_metric, ax_lr):
            ax.grid(True, alpha=0.3)
            ax.set_xlim(left=-0.5, right=max(n_epochs - 0.5, 0.5))
        ax_lr.set_xlabel(f"epoch ({name})")

    axes[0, 0].set_ylabel("loss (lower is better)")
    axes[1, 0].set_ylabel("score (0-1, higher is better)")
    axes[2, 0].set_ylabel("learning rate")
    titles = ("Losses", "Validation metrics", "Learning rate")
    for row in range(3):
        if legend_handles[row]:
            axes[row, -1].legend(
                list(legend_handles[row].values()),
                list(legend_handles[row].keys()),
                loc="center left",
                bbox_to_anchor=(1.12 if row == 2 else 1.02, 0.5),
                fontsize=8,
                frameon=False,
                title=titles[row],
                title_fontsize=9,
                alignment="left",
            )
    note = (
        "Training curves (each stage on its own epoch axis; full-validation metrics only on the epochs "
        "where they were measured)"
    )
    fig.suptitle(textwrap.fill(note, width=int(fig.get_figwidth() * 10)), fontsize=11)
    return _finish(fig, out_png)


# ---------------------------------------------------------------------------------------------- 2 confusion matrix
def plot_confusion_matrix(
    confusion: Sequence[Sequence[int]],
    out_png: str | Path,
    class_names: Sequence[str] = tuple(f"subtype {s}" for s in SUBTYPES),
    title: str = "Lesion subtype classification (validation)",
    macro_f1: float | None = None,
) -> Path:
    """Counts and row-normalised percentages (rows = truth, columns = prediction)."""
    counts = np.asarray(confusion, dtype=float)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {counts.shape}")
    n = counts.shape[0]
    names = list(class_names)[:n] + [f"class {i}" for i in range(len(class_names), n)]
    row_sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(row_sums > 0, counts / row_sums, np.nan)

    fig, ax = plt.subplots(figsize=(1.5 * n + 3.2, 1.3 * n + 2.0), layout="constrained")
    cmap = plt.get_cmap("Blues").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(fractions * 100), cmap=cmap, vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            frac = fractions[i, j]
            pct = "–" if not np.isfinite(frac) else f"{100 * frac:.0f}%"
            colour = "white" if np.isfinite(frac) and frac > 0.55 else "black"
            ax.text(j, i, f"{int(counts[i, j])}\n{pct}", ha="center", va="center", color=colour, fontsize=11)
    ax.set_xticks(range(n), names)
    ax.set_yticks(range(n), [f"{name}\n(n={int(row_sums[i, 0])})" for i, name in enumerate(names)])
    ax.set_xlabel("predicted subtype")
    ax.set_ylabel("true subtype")
    total = counts.sum()
    accuracy = np.trace(counts) / total if total > 0 else math.nan
    heading = title
    details = [f"{int(total)} cases"]
    if np.isfinite(accuracy):
        details.append(f"accuracy {accuracy:.2f}")
    if macro_f1 is not None and np.isfinite(macro_f1):
        details.append(f"macro-F1 {macro_f1:.3f}")
    ax.set_title(f"{heading}\n{', '.join(details)}", fontsize=11)
    cbar = fig.colorbar(im, ax=ax, shrink=0.8)
    cbar.set_label("% of the true class (row)")
    return _finish(fig, out_png)


# ---------------------------------------------------------------------------------------------- 3 dice distributions
def plot_dice_distributions(per_case: pd.DataFrame, out_png: str | Path, *, seed: int = 0) -> Path:
    """Box plots with jittered per-case points of Dice and NSD per region (whole pancreas, lesion)."""
    required = {"case_id", "region", "dice"}
    missing = required - set(per_case.columns)
    if missing:
        raise ValueError(f"per-case table lacks columns: {sorted(missing)}")
    metrics = [("dice", "Dice similarity coefficient", "Dice")]
    if "nsd" in per_case.columns:
        metrics.append(("nsd", "Normalised surface Dice", "NSD"))
    order = [r for r in ("whole", "lesion") if r in set(per_case["region"])]
    order += sorted(set(per_case["region"].astype(str)) - set(order))
    region_labels = {"whole": "whole pancreas\n(pancreas + lesion)", "lesion": "lesion"}
    by_subtype = "subtype" in per_case.columns and per_case["subtype"].notna().any()
    rng = np.random.default_rng(seed)

    fig, axes = plt.subplots(
        1, len(metrics), figsize=(4.2 * len(metrics) + 1.8, 4.8), squeeze=False, layout="constrained"
    )
    for ax, (column, label, short) in zip(axes[0], metrics):
        data, ticks = [], []
        for pos, region in enumerate(order):
            rows = per_case[per_case["region"].astype(str) == region]
            values = pd.to_numeric(rows[column], errors="coerce")
            ok = values.notna().to_numpy()
            data.append(values[ok].to_numpy(dtype=float))
            n_missing = int((~ok).sum())
            tick = f"{region_labels.get(region, region)}\nn={int(ok.sum())}"
            if n_missing:
                tick += f" ({n_missing} undefined)"
            if ok.any():
                tick += f"\nmedian {np.median(values[ok]):.2f}"
            ticks.append(tick)
            x = pos + rng.uniform(-0.17, 0.17, size=int(ok.sum()))
            if by_subtype:
                subtypes = rows["subtype"].to_numpy()[ok]
                colours = [
                    SUBTYPE_COLOURS[int(s) % len(SUBTYPE_COLOURS)] if pd.notna(s) else OKABE_ITO["grey"]
                    for s in subtypes
                ]
            else:
                colours = REGION_COLOURS.get(region, OKABE_ITO["grey"])
            ax.scatter(x, data[-1], s=22, c=colours, alpha=0.85, edgecolors="white", linewidths=0.5, zorder=3)
        box = ax.boxplot(
            [d if d.size else [np.nan] for d in data],
            positions=range(len(order)),
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            zorder=2,
            medianprops={"color": "black", "linewidth": 1.5},
        )
        for patch, region in zip(box["boxes"], order):
            patch.set_facecolor(OKABE_ITO["grey"] if by_subtype else REGION_COLOURS.get(region, OKABE_ITO["grey"]))
            patch.set_alpha(0.2 if by_subtype else 0.25)
        ax.set_xticks(range(len(order)), ticks)
        ax.set_xlim(-0.6, len(order) - 0.4)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"{short} (0-1, higher is better)")
        ax.set_title(label, fontsize=11)
        ax.grid(True, axis="y", alpha=0.3)
    if by_subtype:
        present = sorted({int(s) for s in per_case["subtype"].dropna()})
        handles = [
            Line2D(
                [], [], marker="o", linestyle="", color=SUBTYPE_COLOURS[s % len(SUBTYPE_COLOURS)], label=f"subtype {s}"
            )
            for s in present
        ]
        axes[0, -1].legend(
            handles=handles,
            title="true subtype",
            loc="center left",
            bbox_to_anchor=(1.02, 0.5),
            frameon=False,
            fontsize=9,
        )
    n_cases = per_case["case_id"].nunique()
    fig.suptitle(f"Per-case segmentation quality ({n_cases} cases; one point per case)", fontsize=12)
    return _finish(fig, out_png)


# ---------------------------------------------------------------------------------------------- 4 overlay montage
def select_slice(labels: np.ndarray) -> int:
    """Index along the last axis with the largest lesion (label 2) area; fallback: largest pancreas area.

    A volume without foreground gives the middle slice.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected a 3D label map, got shape {labels.shape}")
    lesion_area = (labels == LESION_LABEL).sum(axis=(0, 1))
    if lesion_area.max() > 0:
        return int(np.argmax(lesion_area))
    pancreas_area = (labels > BACKGROUND_LABEL).sum(axis=(0, 1))
    if pancreas_area.max() > 0:
        return int(np.argmax(pancreas_area))
    return labels.shape[-1] // 2


def window_ct(image: np.ndarray, level: float = CT_LEVEL_HU, width: float = CT_WIDTH_HU) -> np.ndarray:
    """CT values mapped to 0..1 with the given window (HU)."""
    low = level - width / 2
    return np.clip((np.asarray(image, dtype=float) - low) / width, 0.0, 1.0)


def _load_canonical(path: str | Path):
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    return img


def _file_slice_index(path: str | Path, canonical_index: int) -> int:
    """The index in the file's own array of the canonical (RAS) axial slice ``canonical_index``."""
    import nibabel as nib

    img = nib.load(str(path))
    ornt = nib.orientations.io_orientation(img.affine)
    axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
    size = img.shape[axis]
    return size - 1 - canonical_index if ornt[axis, 1] < 0 else canonical_index


def _radiological(slice_xy: np.ndarray) -> np.ndarray:
    """A RAS-canonical axial slice ``[x, y]`` as display rows/columns with ``origin="lower"``:
    patient's right on the image's left, anterior at the top."""
    return np.asarray(slice_xy)[::-1, :].T


def _crop_box(
    mask: np.ndarray, spacing_xy: tuple[float, float], margin_mm: float = 35.0, min_size_mm: float = 110.0
) -> tuple[slice, slice]:
    """Rows/columns around the foreground of a display-oriented slice, with a margin (whole slice if empty)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return slice(None), slice(None)
    # display rows follow y (spacing_xy[1]), columns follow x (spacing_xy[0])
    out = []
    for idx, size, step in ((rows, mask.shape[0], spacing_xy[1]), (cols, mask.shape[1], spacing_xy[0])):
        lo, hi = idx.min(), idx.max() + 1
        half = max((hi - lo) / 2 + margin_mm / step, min_size_mm / step / 2)
        centre = (lo + hi) / 2
        a, b = int(max(0, math.floor(centre - half))), int(min(size, math.ceil(centre + half)))
        out.append(slice(a, b))
    return out[0], out[1]


def _overlay(ax, labels: np.ndarray, aspect: float, alpha: float = 0.45) -> None:
    cmap = ListedColormap([PANCREAS_COLOUR, LESION_COLOUR])
    shown = np.ma.masked_where(labels == BACKGROUND_LABEL, np.where(labels == LESION_LABEL, 1, 0))
    ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, alpha=alpha, origin="lower", interpolation="nearest", aspect=aspect)
    for mask, colour in ((labels > BACKGROUND_LABEL, PANCREAS_COLOUR), (labels == LESION_LABEL, LESION_COLOUR)):
        region = mask.astype(float)
        if region.any() and not region.all():
            ax.contour(region, levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")


def plot_overlay_montage(
    cases: list[dict], out_png: str | Path, *, level: float = CT_LEVEL_HU, width: float = CT_WIDTH_HU
) -> Path:
    """One row per case: CT, CT + reference, CT + prediction on the axial slice with the largest lesion."""
    if not cases:
        raise ValueError("plot_overlay_montage: no cases given")
    nrows = len(cases)
    fig, axes = plt.subplots(nrows, 3, figsize=(10.5, 3.55 * nrows + 0.9), squeeze=False, layout="constrained")
    cropped = False
    for row, case in enumerate(cases):
        image_img = _load_canonical(case["image"])
        ref_img = _load_canonical(case["reference"])
        pred_img = _load_canonical(case["prediction"])
        image = np.asarray(image_img.dataobj, dtype=np.float32)
        reference = np.rint(np.asarray(ref_img.dataobj)).astype(np.uint8)
        prediction = np.rint(np.asarray(pred_img.dataobj)).astype(np.uint8)
        if image.ndim == 4 and image.shape[-1] == 1:
            image = image[..., 0]
        for what, arr in (("reference", reference), ("prediction", prediction)):
            if arr.shape != image.shape:
                raise ValueError(f"{case['case_id']}: {what} shape {arr.shape} differs from image shape {image.shape}")
        z = select_slice(reference)
        zooms = tuple(float(v) for v in image_img.header.get_zooms()[:2])
        ct = _radiological(window_ct(image[:, :, z], level, width))
        ref = _radiological(reference[:, :, z])
        pred = _radiological(prediction[:, :, z])
        rows, cols = _crop_box((ref > BACKGROUND_LABEL) | (pred > BACKGROUND_LABEL), zooms)
        full_shape = ct.shape
        ct, ref, pred = ct[rows, cols], ref[rows, cols], pred[rows, cols]
        cropped = cropped or ct.shape != full_shape
        aspect = zooms[1] / zooms[0]

        panels = (("CT", None), ("reference", ref), ("prediction", pred))
        for col, (what, labels) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(ct, cmap="gray", vmin=0, vmax=1, origin="lower", aspect=aspect, interpolation="bilinear")
            if labels is not None:
                _overlay(ax, labels, aspect)
            if what == "prediction" and (ref > BACKGROUND_LABEL).any() and not (ref > BACKGROUND_LABEL).all():
                ax.contour(
                    (ref > BACKGROUND_LABEL).astype(float),
                    levels=[0.5],
                    colors="white",
                    linewidths=0.9,
                    linestyles="--",
                    origin="lower",
                )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(what, fontsize=9)
            if col == 0:
                for text, x, y, ha in (("R", 0.03, 0.5, "left"), ("L", 0.97, 0.5, "right"), ("A", 0.5, 0.97, "center")):
                    ax.text(
                        x,
                        y,
                        text,
                        transform=ax.transAxes,
                        ha=ha,
                        va="center" if text != "A" else "top",
                        color="yellow",
                        fontsize=9,
                        fontweight="bold",
                    )
        dice_value = case.get("dice")
        dice_text = (
            f"whole-pancreas Dice {float(dice_value):.3f}"
            if dice_value is not None and np.isfinite(float(dice_value))
            else "Dice n/a"
        )
        label = case.get("label", "")
        lesion_px = int((reference[:, :, z] == LESION_LABEL).sum())
        z_file = _file_slice_index(case["reference"], z)
        axes[row, 0].set_ylabel(
            f"{case['case_id']}\n{label}: {dice_text}\naxial slice {z_file}{'' if lesion_px else ' (no lesion)'}",
            fontsize=9,
        )
    handles = [
        Patch(facecolor=PANCREAS_COLOUR, alpha=0.7, label="pancreas"),
        Patch(facecolor=LESION_COLOUR, alpha=0.7, label="lesion"),
        Line2D(
            [],
            [],
            color="black",
            linestyle="--",
            linewidth=0.9,
            label="reference pancreas outline (white, on prediction)",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False, fontsize=9)
    crop_note = "; cropped around the pancreas" if cropped else ""
    fig.suptitle(
        f"Best and worst validation cases: axial slice with the largest reference lesion\n"
        f"(radiological view: patient's right on the left, anterior up; CT window L{level:g}/W{width:g} HU"
        f"{crop_note})",
        fontsize=10,
    )
    return _finish(fig, out_png)


# ---------------------------------------------------------------------------------------------- 5 benchmark
def _number(benchmark: Mapping, key: str) -> float | None:
    value = benchmark.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _label_bar(ax, bar, value: float, text: str) -> None:
    """``text`` just above the top (``value``) of a bar."""
    ax.annotate(
        text,
        (bar.get_x() + bar.get_width() / 2, value),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=8,
    )


def _row_colour(row: str) -> str:
    known = BENCHMARK_ROW.get(row)
    return OKABE_ITO[known.colour if known else "grey"]


def plot_benchmark(benchmark: dict, per_case: pd.DataFrame | None, out_png: str | Path) -> Path:
    """Total inference time per row, warm (bars) and cold (markers), speed-up annotated; per-case times; peak
    memory."""
    rows = [r for r in BENCHMARK_ROW if _number(benchmark, f"{r}_seconds_total") is not None]
    have_per_case = per_case is not None and len(per_case) > 0 and {"case_id", "path", "seconds"} <= set(per_case)
    widths = [1.8, 2.2, 1.5] if have_per_case else [1.8, 1.5]
    fig, axes = plt.subplots(
        1, len(widths), figsize=(3.3 * sum(widths) + 1.0, 4.8), width_ratios=widths, layout="constrained"
    )
    ax_total, ax_mem = axes[0], axes[-1]

    # total time
    totals = [_number(benchmark, f"{r}_seconds_total") for r in rows]
    bars = ax_total.bar([BENCHMARK_ROW[r].tick for r in rows], totals, color=[_row_colour(r) for r in rows])
    for bar, value in zip(bars, totals):
        _label_bar(ax_total, bar, value, f"{value:.1f} s")
    colds = [_number(benchmark, f"{r}_cold_seconds") for r in rows]
    if any(c is not None for c in colds):
        xs = [bar.get_x() + bar.get_width() / 2 for bar, c in zip(bars, colds) if c is not None]
        ax_total.scatter(
            xs,
            [c for c in colds if c is not None],
            marker="_",
            s=300,
            color=OKABE_ITO["vermillion"],
            zorder=3,
            label="cold (first pass, from process start)",
        )
        ax_total.legend(frameon=False, fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.72))
    speedup = _number(benchmark, "speedup")
    base, opt = _number(benchmark, "baseline_seconds_total"), _number(benchmark, "optimized_seconds_total")
    if speedup is None and base and opt:
        speedup = base / opt
    notes = []
    if speedup is not None:
        notes.append(f"optimized is {speedup:.2f}× faster than baseline")
    ratio = _number(benchmark, "optimized_over_one_pass")
    one = _number(benchmark, "one_pass_seconds_total")
    if ratio is None and opt and one:
        ratio = opt / one
    if ratio is not None:
        notes.append(f"optimized takes {ratio:.2f}× the one-pass time")
    end_to_end = _number(benchmark, "optimized_over_end_to_end_bound")
    if end_to_end is not None:
        notes.append(f"and {end_to_end:.2f}× the end-to-end bound")
    stock_settings = _number(benchmark, "stock_settings_speedup")
    if stock_settings is not None:
        notes.append(f"at the stock's settings: {stock_settings:.2f}× faster than baseline")
    if notes:
        ax_total.text(
            0.5,
            0.97,
            "\n".join(notes),
            transform=ax_total.transAxes,
            ha="center",
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.7"},
        )
    if totals:
        ax_total.set_ylim(0, max(totals + [c for c in colds if c is not None]) * 1.45)
    else:
        ax_total.text(0.5, 0.5, "no timings", ha="center", va="center", transform=ax_total.transAxes)
    ax_total.set_ylabel("total inference time, warm (s)")
    ax_total.set_title("Total time, all cases", fontsize=11)
    ax_total.grid(True, axis="y", alpha=0.3)

    # per case
    if have_per_case:
        ax_case = axes[1]
        table = per_case.copy()
        table["seconds"] = pd.to_numeric(table["seconds"], errors="coerce")
        wide = table.pivot_table(index="case_id", columns="path", values="seconds", aggfunc="mean")
        case_rows = [r for r in BENCHMARK_ROW if r in wide.columns]
        case_rows += sorted(set(wide.columns) - set(case_rows))
        x = np.arange(len(wide))
        width = 0.8 / max(1, len(case_rows))
        for i, r in enumerate(case_rows):
            known = BENCHMARK_ROW.get(r)
            ax_case.bar(
                x + (i - (len(case_rows) - 1) / 2) * width,
                wide[r].to_numpy(),
                width,
                color=_row_colour(r),
                label=known.label if known else r,
            )
        fontsize = 8 if len(wide) <= 20 else 6
        ax_case.set_xticks(
            x,
            list(wide.index),
            rotation=90 if len(wide) > 6 else 30,
            ha="center" if len(wide) > 6 else "right",
            fontsize=fontsize,
        )
        if len(wide) > 60:
            ax_case.set_xticks([])
            ax_case.set_xlabel(f"case ({len(wide)} cases)")
        else:
            ax_case.set_xlabel("case")
        ax_case.set_ylabel("work per case (s): measured steps")
        ax_case.set_title("Time per case", fontsize=11)
        ax_case.legend(frameon=False, fontsize=9, title="row")
        ax_case.grid(True, axis="y", alpha=0.3)

    # peak memory
    mem_rows = [r for r in BENCHMARK_ROW if _number(benchmark, f"{r}_peak_memory_mb")]
    if mem_rows:
        mem = [_number(benchmark, f"{r}_peak_memory_mb") for r in mem_rows]
        bars = ax_mem.bar([BENCHMARK_ROW[r].tick for r in mem_rows], mem, color=[_row_colour(r) for r in mem_rows])
        for bar, value in zip(bars, mem):
            _label_bar(ax_mem, bar, value, f"{value:,.0f}")
        ax_mem.set_ylim(0, max(mem) * 1.2)
        if all(f"{r}_peak_gpu_mb" in benchmark for r in mem_rows):
            kind = "peak GPU memory"
        elif all(f"{r}_peak_rss_mb" in benchmark for r in mem_rows):
            kind = "peak resident memory (RSS)"
        else:
            kind = "peak memory"
        ax_mem.set_ylabel(f"{kind} (MiB)")
        ax_mem.grid(True, axis="y", alpha=0.3)
    else:
        ax_mem.text(
            0.5,
            0.5,
            "peak memory\nnot measured",
            ha="center",
            va="center",
            transform=ax_mem.transAxes,
            fontsize=10,
            color="0.4",
        )
        ax_mem.set_xticks([])
        ax_mem.set_yticks([])
    ax_mem.set_title("Peak memory", fontsize=11)

    header = [
        f"setting: {benchmark['setting']}" if benchmark.get("setting") else None,
        f"device: {benchmark['device']}" if benchmark.get("device") else None,
    ]
    repeats = _number(benchmark, "repeats")
    if repeats is not None and repeats > 1:
        header.append(f"times: median of {repeats:g} timed runs")
    extras = []
    agreement = _number(benchmark, "agreement_whole_dice")
    if agreement is not None:
        lowest = _number(benchmark, "agreement_whole_dice_min")
        extras.append(
            f"optimized vs baseline masks: whole-pancreas Dice {agreement:.3f}"
            + (f" (lowest case {lowest:.3f})" if lowest is not None else "")
        )
    same = _number(benchmark, "same_subtype_fraction")
    if same is not None:
        extras.append(f"same predicted subtype in {100 * same:.0f}% of cases")
    header = [h for h in header if h]
    title = "Inference benchmark" + (f" ({', '.join(header)})" if header else "")
    if extras:
        title += "\n" + "; ".join(extras)
    fig.suptitle(title, fontsize=11)
    return _finish(fig, out_png)


def plot_learning_summary(
    summary: Mapping,
    path: str | Path,
    targets: Mapping[str, float] | None = None,
    minutes_target: float | None = learning.TARGET_MINUTES,
) -> Path:
    """Metrics per seed (dots, mean tick, dashed targets) beside minutes per run (bars, the time budget)."""
    targets = learning.DEFAULT_TARGETS if targets is None else targets
    runs = list(summary.get("runs") or [])
    ok = [r for r in runs if r.get("status", "ok") == "ok"]
    seeds = [r["seed"] for r in runs]
    palette = [
        OKABE_ITO[c]
        for c in ("blue", "orange", "bluish_green", "reddish_purple", "sky_blue", "vermillion", "yellow", "black")
    ]
    colour = {s: palette[i % len(palette)] for i, s in enumerate(seeds)}

    # the headline metrics, each followed by its variants the runs report (e.g. *_without_prior)
    columns: list[tuple[str, Callable[[Mapping], float | None], float | None]] = []
    metric_keys = list(summary.get("aggregate_metrics") or {})
    for field, key in learning.HEADLINE_METRICS.items():
        columns.append(
            (learning.HEADLINE_LABELS[field], lambda r, f=field: learning.finite_number(r.get(f)), targets.get(field))
        )
        for variant in (k for k in metric_keys if k.startswith(key + "_")):
            suffix = variant[len(key) + 1 :].replace("_", " ")
            columns.append(
                (
                    f"{learning.HEADLINE_LABELS[field]}\n({suffix})",
                    lambda r, k=variant: learning.finite_number((r.get("metrics") or {}).get(k)),
                    targets.get(field),
                )
            )

    fig, (ax_m, ax_t) = plt.subplots(
        1,
        2,
        figsize=(max(8.5, 2.0 * len(columns) + 4.5), 4.8),
        width_ratios=[max(2.0, len(columns) * 0.9), 1.4],
        layout="constrained",
    )
    n_ok = max(1, len(ok))
    offsets = [0.0] if n_ok == 1 else [-0.18 + 0.36 * i / (n_ok - 1) for i in range(n_ok)]
    target_drawn = mean_drawn = False
    for x, (label, value_of, target) in enumerate(columns):
        values = [value_of(r) for r in ok]
        for dx, run, value in zip(offsets, ok, values):
            if value is None:
                continue
            ax_m.scatter(
                x + dx,
                value,
                s=40,
                color=colour[run["seed"]],
                edgecolor="white",
                linewidth=0.6,
                zorder=3,
                label=f"seed {run['seed']}",
            )
            ax_m.annotate(
                str(run["seed"]),
                (x + dx, value),
                xytext=(4, 2),
                textcoords="offset points",
                fontsize=7,
                color=colour[run["seed"]],
            )
        defined = [v for v in values if v is not None]
        if defined:
            mean = statistics.fmean(defined)
            ax_m.hlines(
                mean,
                x - 0.28,
                x + 0.28,
                color=OKABE_ITO["black"],
                linewidth=2,
                zorder=2,
                label=None if mean_drawn else "mean over runs",
            )
            ax_m.annotate(f"{mean:.3f}", (x + 0.28, mean), xytext=(2, -3), textcoords="offset points", fontsize=7)
            mean_drawn = True
        if target is not None:
            ax_m.hlines(
                target,
                x - 0.4,
                x + 0.4,
                color=OKABE_ITO["vermillion"],
                linestyle="--",
                linewidth=1.2,
                zorder=1,
                label=None if target_drawn else "target",
            )
            target_drawn = True
    ax_m.set_xticks(range(len(columns)), [c[0] for c in columns], fontsize=9)
    ax_m.set_xlim(-0.6, len(columns) - 0.4)
    ax_m.set_ylim(-0.03, 1.05)
    ax_m.set_ylabel("validation score (0-1, higher is better)")
    ax_m.set_title("Validation metrics per run (mean tick, dashed target)", fontsize=11)
    ax_m.grid(True, axis="y", alpha=0.3)
    handles = dict(zip(*reversed(ax_m.get_legend_handles_labels())))
    if handles:
        ax_m.legend(list(handles.values()), list(handles.keys()), loc="best", fontsize=8, frameon=True)
    if not ok:
        ax_m.text(0.5, 0.5, "no successful run", ha="center", va="center", transform=ax_m.transAxes)

    # minutes per run (failed runs hatched grey)
    xs = range(len(runs))
    minutes = [learning.finite_number(r.get("minutes")) or 0.0 for r in runs]
    bars = ax_t.bar(
        xs, minutes, color=[colour[r["seed"]] if r.get("status", "ok") == "ok" else OKABE_ITO["grey"] for r in runs]
    )
    for bar, run, value in zip(bars, runs, minutes):
        failed = run.get("status", "ok") != "ok"
        if failed:
            bar.set_hatch("//")
        _label_bar(ax_t, bar, value, f"{value:.1f}" + (" failed" if failed else ""))
    top = max(minutes, default=0.0)
    if minutes_target is not None:
        ax_t.axhline(minutes_target, color=OKABE_ITO["vermillion"], linestyle="--", linewidth=1.2)
        ax_t.text(
            0.99,
            minutes_target,
            f"{minutes_target:g} min",
            transform=ax_t.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=8,
            color=OKABE_ITO["vermillion"],
        )
        top = max(top, minutes_target)
    ax_t.set_ylim(0, top * 1.2 if top > 0 else 1.0)
    ax_t.set_xticks(list(xs), [f"seed {s}" for s in seeds], fontsize=9)
    ax_t.set_ylabel("minutes end to end")
    mean_minutes = (summary.get("aggregate") or {}).get("minutes", {}).get("mean")
    ax_t.set_title(f"Time per run (mean {learning.fmt_number(mean_minutes, 1)} min)", fontsize=11)
    ax_t.grid(True, axis="y", alpha=0.3)

    commit = summary.get("commit")
    title = f"Learning benchmark: {len(ok)}/{len(runs)} runs succeeded, commit {str(commit)[:8] if commit else 'n/a'}"
    if summary.get("failed_seeds"):
        title += f" (failed seeds: {', '.join(map(str, summary['failed_seeds']))})"
    fig.suptitle(title, fontsize=12)
    return _finish(fig, path)


def plot_real_ct_summary(summary: Mapping, path: str | Path) -> Path:
    """The real-CT benchmark: each run's whole-pancreas and lesion Dice (mean, and every case faintly) against its
    training minutes, one colour per row."""
    runs = [r for r in summary.get("runs") or [] if r.get("status") == "ok"]
    rows = list(dict.fromkeys(r["row"] for r in runs))
    palette = [OKABE_ITO[c] for c in ("black", "orange", "blue", "bluish_green", "reddish_purple", "vermillion")]
    colour = {row: palette[i % len(palette)] for i, row in enumerate(rows)}
    regions = (("whole", "whole-pancreas Dice"), ("lesion", "lesion Dice"))
    fig, axes = plt.subplots(1, len(regions), figsize=(9.0, 4.2), sharey=True, layout="constrained")
    for ax, (region, title) in zip(axes, regions):
        for run in runs:
            minutes = run.get("train_minutes") or run.get("minutes")
            cases = [c for c in run.get("per_case_dice", {}).get(region, []) if c is not None]
            if cases:
                ax.scatter([minutes] * len(cases), cases, s=14, color=colour[run["row"]], alpha=0.3, linewidth=0)
            mean = run["scores"][region]["dice"]["mean"]
            if mean is None:
                continue
            ax.scatter(minutes, mean, s=70, color=colour[run["row"]], edgecolor="white", zorder=3, label=run["row"])
            ax.annotate(
                f"{run['row']} s{run['seed']}: {mean:.3f}",
                (minutes, mean),
                xytext=(6, 4),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_title(title)
        ax.set_xlabel("stage-1 training (minutes)")
        ax.set_xlim(0, max([r.get("train_minutes") or r.get("minutes") or 1.0 for r in runs] or [1.0]) * 1.3)
        ax.set_ylim(-0.03, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Dice (dot: mean; faint: each case)")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour[row], label=row) for row in rows]
    if handles:
        axes[-1].legend(handles=handles, loc="upper left", fontsize=8)
    split = summary.get("split") or {}
    fig.suptitle(
        f"Real-CT segmentation benchmark: {len(split.get('train', []))} training, "
        f"{len(split.get('evaluation', []))} evaluation cases",
        fontsize=10,
    )
    return _finish(fig, path)
