"""What a quiz folder can support, checked at start-up before any job runs.

:func:`quiz_counts` counts the cases of a quiz folder per split and subtype by their names only (nothing is opened:
the conversion validates the files), or takes them from the synthetic data's configured counts.
:func:`folder_plan` turns the counts and the config into what the run does: refusals (one message per problem,
naming the folder, the counts and the setting to change) and fallbacks (a missing ``validation/`` or ``test/``
leaves its targets out; too few training cases for a selection split train on all of them and use the last epoch's
checkpoint; a folder of one subtype runs the segmentation path alone), each stated in the log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pancreas_mtl.data.labels import SUBTYPES
from pancreas_mtl.data.quiz_layout import LABELLED_SPLITS, discover_quiz_cases

# up: the configuration the workflow plans is the planning module's
from pancreas_mtl.nnunet.planning import PARENT_CONFIGURATION

# up: the checkpoints a segmentation-only run can use are those stage 1's trainer keeps (training owns them)
from pancreas_mtl.training.selection import STAGE1_CHECKPOINTS

#: nnU-Net's configurations a planner may plan; the workflow plans 3d_fullres only (and its CPU configuration
#: inherits it)
NNUNET_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
#: what a segmentation-only run makes instead of the multi-task outputs
_SEGMENTATION_PATH = "stage 1 without the classification head, no stage 2, no subtype results and no submission"


def selection_size(n_cases: int, fraction: float) -> int:
    """How many of a subtype's ``n_cases`` training cases select the checkpoints: ``fraction`` of them, rounded, at
    least one of two or more (a single case stays in training); none with ``fraction`` 0. The conversion's split and
    this check share it."""
    return max(1, round(fraction * n_cases)) if n_cases >= 2 and fraction > 0 else 0


@dataclass(frozen=True)
class QuizCounts:
    """Cases per subtype of train/ and validation/ (and those of a plain layout, without subtype folders), test
    images, and the split folders that are missing."""

    where: str  # the quiz folder, or a description of the synthetic data
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: int
    missing: tuple[str, ...] = ()  # "validation", "test"
    # labelled cases without a subtype (image and mask pairs directly in the split folder): train, validation
    plain: tuple[int, int] = (0, 0)

    def total(self, split: str) -> int:
        """A labelled split's cases, with and without a subtype."""
        return sum(getattr(self, split)) + self.plain[LABELLED_SPLITS.index(split)]

    def table(self) -> str:
        """The counts as one table, for the start-up log (a "plain" column where cases have no subtype)."""
        width = max(len(split) for split in (*LABELLED_SPLITS, "test"))
        columns = [f"subtype{s}" for s in SUBTYPES] + (["   plain"] if any(self.plain) else [])
        lines = [f"cases in {self.where}:", f"{'':{width}}  " + "  ".join(columns) + "  total"]
        for split, plain in zip(LABELLED_SPLITS, self.plain):
            counts = (*getattr(self, split), plain)[: len(columns)]
            shown = "  ".join(f"{n:8d}" for n in counts) + f"  {self.total(split):5d}"
            lines.append(f"{split:{width}}  {'missing' if split in self.missing else shown}")
        test = "missing" if "test" in self.missing else f"{'':{10 * len(columns) - 2}}  {self.test:5d}"
        lines.append(f"{'test':{width}}  {test}")
        return "\n".join(lines)


def quiz_counts(quiz_dir: str | Path) -> QuizCounts:
    """Count a quiz folder's cases by name (layout problems are left to the conversion, which reports each)."""
    root = Path(quiz_dir)
    if not root.is_dir():
        return QuizCounts(str(root), (0,) * len(SUBTYPES), (0,) * len(SUBTYPES), 0, ("train", "validation", "test"))
    cases, _ = discover_quiz_cases(root, allow_partial=True)
    per = {
        split: tuple(sum(1 for c in cases if c.split == split and c.subtype == s) for s in SUBTYPES)
        for split in LABELLED_SPLITS
    }
    missing = tuple(split for split in ("train", "validation", "test") if not (root / split).is_dir())
    plain = tuple(sum(1 for c in cases if c.split == split and c.subtype is None) for split in LABELLED_SPLITS)
    test = sum(1 for c in cases if c.split == "test")
    return QuizCounts(str(root), per["train"], per["validation"], test, missing, plain)


def synthetic_counts(counts: dict) -> QuizCounts:
    """The synthetic data's configured counts (``synthetic.counts``)."""
    test, validation = int(counts["test"]), tuple(counts["validation"])
    return QuizCounts(
        "the synthetic data (synthetic.counts)",
        tuple(counts["train"]),
        validation,
        test,
        # the generator makes no folder for a split without cases
        tuple(split for split, n in (("validation", sum(validation)), ("test", test)) if n == 0),
    )


@dataclass
class FolderPlan:
    """What the run does with the folder: problems refuse it; the fallbacks are logged."""

    counts: QuizCounts
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    predict_test: bool = True
    evaluate_validation: bool = True
    # False: too few training cases to hold any out; the models train on all of them and the last epoch's
    # checkpoint (checkpoint_final) is the one used
    select_checkpoints: bool = True
    # True: stage 1 alone (training.mode segmentation, or auto on a folder of one subtype): no classification head,
    # no stage 2, no subtype results
    segmentation_only: bool = False


def _counts_text(counts: tuple[int, ...]) -> str:
    return "/".join(str(n) for n in counts) + " (subtypes " + "/".join(str(s) for s in SUBTYPES) + ")"


def folder_plan(counts: QuizCounts, config: dict) -> FolderPlan:
    """What ``counts`` support under ``config`` (schema-validated): the refusals and the fallbacks."""
    plan = FolderPlan(counts)
    where, training = counts.where, config["training"]
    train, n_train, n_plain = counts.train, counts.total("train"), counts.plain[0]
    if "train" in counts.missing or n_train == 0:
        plan.problems.append(
            f"{where}: no training cases (train/subtype{{0,1,2}}/, or image and mask pairs directly in train/): "
            "nothing to train on"
        )
        return plan

    present = [s for s, n in zip(SUBTYPES, train) if n > 0]
    mode = training["mode"]
    if n_plain and mode != "segmentation":
        if mode == "auto":
            plan.segmentation_only = True
            plan.notes.append(
                f"{where}/train holds {n_plain} image and mask pairs without subtype folders: the segmentation path "
                f"runs alone (training.mode auto): {_SEGMENTATION_PATH}"
            )
        else:
            plan.problems.append(
                f"{where}/train holds {n_plain} image and mask pairs without subtype folders, and training.mode "
                "multitask needs each case's subtype: put them in train/subtype{0,1,2}/, or set training.mode "
                "segmentation (or auto) to train the segmentation alone"
            )
    elif mode == "segmentation":
        plan.segmentation_only = True
        plan.notes.append(f"training.mode segmentation: stage 1 alone (segmentation): {_SEGMENTATION_PATH}")
    elif mode == "auto" and len(present) == 1:
        plan.segmentation_only = True
        plan.notes.append(
            f"{where}/train: only subtype {present[0]} has training cases ({_counts_text(train)}): the segmentation "
            f"path runs alone (training.mode auto): {_SEGMENTATION_PATH}. Add cases of the other subtypes to train "
            "the classifier"
        )
    elif len(present) < len(SUBTYPES):
        absent = [s for s in SUBTYPES if s not in present]
        plan.problems.append(
            f"{where}/train: no training cases of subtype(s) {', '.join(map(str, absent))} ({_counts_text(train)}): "
            "the classifier cannot learn a subtype it never sees; add cases to train/subtype"
            f"{absent[0]}/, or set training.mode: segmentation to train the segmentation alone"
        )
    stock = training["stage1"]["trainer"] == "stock"
    if stock and not plan.segmentation_only:
        plan.problems.append(
            "training.stage1.trainer stock (nnU-Net's own trainer, a benchmark row) trains the segmentation alone, "
            "with no stage 2 after it: set training.mode segmentation, or training.stage1.trainer project"
        )
    if plan.segmentation_only and training["inference_checkpoint"] not in STAGE1_CHECKPOINTS:
        plan.problems.append(
            f"training.inference_checkpoint {training['inference_checkpoint']!r} is chosen by the classification "
            f"head, which a segmentation-only run does not train: set one of {', '.join(STAGE1_CHECKPOINTS)}"
        )

    if training["split"] == "official":
        if training["selection_fraction"] == 0:
            plan.select_checkpoints = False
            plan.notes.append(
                f"training.selection_fraction 0: no training case is held out to select the checkpoints; the models "
                f"train on all {n_train} training cases, and the last epoch's checkpoint (checkpoint_final) is the "
                "one stage 2 starts from and inference uses"
            )
        elif not any(selection_size(n, training["selection_fraction"]) for n in (*train, n_plain)):
            plan.select_checkpoints = False
            plan.notes.append(
                f"{where}/train: training.split official holds out training.selection_fraction "
                f"({training['selection_fraction']}) of each subtype's training cases to select the checkpoints, "
                f"and a subtype needs two cases to give one ({_counts_text(train)}): the models train on all "
                f"{n_train} training cases without a selection split, and the last epoch's checkpoint "
                "(checkpoint_final) is the one stage 2 starts from and inference uses"
            )
    else:
        k = training["k"]
        if not 2 <= k <= n_train:
            plan.problems.append(
                f"{where}/train: training.split kfold with training.k {k} needs 2 <= k <= {n_train} (the training "
                f"cases, {_counts_text(train)}): set training.k between 2 and {n_train}"
            )
    if stock and plan.select_checkpoints:
        plan.select_checkpoints = False
        plan.notes.append(
            "training.stage1.trainer stock: nnU-Net's own trainer keeps no checkpoint the workflow selects; the last "
            "epoch's (checkpoint_final) is the one inference uses"
        )

    if "validation" in counts.missing:
        plan.evaluate_validation = False
        plan.notes.append(
            f"{where} has no validation/ folder: the final metrics, the inference benchmark and the report plots "
            "are left out of `rule all` (the official validation cases are what they measure)"
        )
    if "test" in counts.missing or counts.test == 0:
        plan.predict_test = False
        plan.notes.append(
            f"{where} has no test images (test/): the test predictions, subtype_results.csv and submission.zip "
            "are left out of `rule all`"
        )
        if config["benchmark"]["split"] == "test":
            plan.problems.append(
                f"{where}: benchmark.split test, but the folder has no test images: set benchmark.split validation"
            )

    configuration = config["nnunet"]["configuration"]
    cpu_name = config["nnunet"]["cpu_configuration"]["name"]
    if configuration in NNUNET_CONFIGURATIONS and configuration != PARENT_CONFIGURATION:
        plan.problems.append(
            f"nnunet.configuration {configuration!r}: the workflow plans and preprocesses {PARENT_CONFIGURATION} "
            f"only (and the CPU configuration {cpu_name!r}, which inherits it); set {PARENT_CONFIGURATION}"
        )
    elif configuration not in (PARENT_CONFIGURATION, cpu_name):
        plan.problems.append(
            f"nnunet.configuration {configuration!r} is neither {PARENT_CONFIGURATION} nor the CPU "
            f"configuration's name (nnunet.cpu_configuration.name: {cpu_name!r})"
        )
    return plan
