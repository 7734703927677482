"""The repeated-run learning benchmark: the demo workflow end to end in fresh copies of the committed tree.

What ``workflow/scripts/benchmark_learning.py`` runs. Each seed gets its own folder
``<out>/runs/seed_<S>/``:

* ``repo/``: the committed tree at HEAD (``git archive HEAD | tar -x``), what a fresh clone holds;
  uncommitted changes are not measured (:func:`uncommitted_changes` lists them for a warning);
* ``config_overrides.yaml``: the seed (at ``seed_key``, default ``training.seed``) and the user's
  ``--config`` items, nested and typed, passed to Snakemake as its last ``--configfile``;
* ``snakemake.log``: Snakemake's stdout and stderr;
* ``result.json``: written (atomically) only after a successful run, read back by a later
  invocation with the same seed, config overrides and commit instead of running again.

Why the overrides travel as a YAML file rather than ``--config training.seed=S``: Snakemake 9 rejects a
dotted key (``Config entry must start with a valid identifier``), and a nested ``--config
'training={seed: 1}'`` reaches the config as the *string* ``'1'`` (Snakemake reads it with YAML's
BaseLoader), which the schema's ``integer`` refuses. Config files are merged recursively into
``config/config.yaml``, so only the named keys change.

:func:`summarise_runs` aggregates the runs (mean, min, max, sample std over the successful ones);
:func:`pancreas_mtl.report.plots.plot_learning_summary` draws the metrics per seed and the minutes per run.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import yaml

from pancreas_mtl.errors import UserInputError
from pancreas_mtl.evaluation.summary import write_json
from pancreas_mtl.inference.model_archive import sha256_file

#: headline fields of a run -> key of the workflow's ``results/metrics/summary.json``
HEADLINE_METRICS = {
    "whole_dice": "whole_pancreas_dice_mean",
    "lesion_dice": "lesion_dice_mean",
    "macro_f1": "macro_f1",
}
HEADLINE_LABELS = {"whole_dice": "whole-pancreas Dice", "lesion_dice": "lesion Dice", "macro_f1": "subtype macro-F1"}
#: fields of ``summary["aggregate"]``
AGGREGATE_FIELDS = (*HEADLINE_METRICS, "minutes")
#: dashed target lines of the plot (what the demo should reach)
DEFAULT_TARGETS = {"whole_dice": 0.90, "lesion_dice": 0.60, "macro_f1": 0.90}
#: the minutes line of the plot (the demo's time budget on 2 CPU cores)
TARGET_MINUTES = 20.0

METRICS_FILE = Path("results") / "metrics" / "summary.json"
RESULT_FILE = "result.json"
LOG_FILE = "snakemake.log"
OVERRIDES_FILE = "config_overrides.yaml"
DEFAULT_SEED_KEY = "training.seed"

#: metric keys ``aggregate_metrics`` takes: ``*_mean`` and ``macro_f1``, each optionally followed by a
#: variant suffix (``lesion_dice_mean_without_prior``, ``macro_f1_without_prior``)
AGGREGATED_KEY = re.compile(r"^(?:.+_mean|macro_f1)(?:_.+)?$")


# ---------------------------------------------------------------------------------------------- git
def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserInputError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout


def find_repo_root(start: str | Path) -> Path:
    """The top folder of the git work tree holding ``start``; a clear error outside a git repository."""
    start = Path(start)
    if not start.is_dir():
        start = start.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(start), "rev-parse", "--show-toplevel"], check=False, capture_output=True, text=True
        )
    except FileNotFoundError as err:
        raise UserInputError("the learning benchmark needs git, which is not on PATH") from err
    if result.returncode != 0:
        raise UserInputError(
            f"{start} is not inside a git repository: the learning benchmark measures the committed tree "
            f"(git archive HEAD) ({result.stderr.strip()})"
        )
    return Path(result.stdout.strip())


def head_commit(repo: str | Path) -> str:
    """``git rev-parse HEAD`` of ``repo``."""
    return _git(Path(repo), "rev-parse", "HEAD").strip()


def head_commit_or_none(path: str | Path) -> str | None:
    """HEAD of the git work tree whose top folder is ``path``; None for a copy of the workflow (also one inside
    another checkout's ``results/``) or without git."""
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    lines = result.stdout.split()
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != Path(path).resolve():
        return None
    return lines[1]


def uncommitted_changes(repo: str | Path) -> list[str]:
    """``git status --porcelain`` lines (modified, staged and untracked, not ignored files)."""
    return [line for line in _git(Path(repo), "status", "--porcelain").splitlines() if line.strip()]


def export_committed_tree(repo: str | Path, dest: str | Path, ref: str = "HEAD") -> Path:
    """``git archive <ref> | tar -x -C dest``: the committed tree in a fresh (emptied) ``dest``."""
    repo, dest = Path(repo), Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(repo), "archive", "--format=tar", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True, check=False)
    archive.stdout.close()
    archive_err = archive.stderr.read().decode(errors="replace")
    archive.stderr.close()
    if archive.wait() != 0:
        raise UserInputError(f"git archive {ref} failed in {repo}: {archive_err.strip()}")
    if untar.returncode != 0:
        raise UserInputError(f"tar -x into {dest} failed: {untar.stderr.decode(errors='replace').strip()}")
    return dest


# ---------------------------------------------------------------------------------------------- config overrides
def _set_dotted(tree: dict, key: str, value, origin: str) -> None:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise UserInputError(f"{origin}: {key!r} is not a config key (dot-separated names)")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserInputError(f"{origin}: {'.'.join(parts[: i + 1])} is set to a value and used as a section")
        node = child
    if isinstance(node.get(parts[-1]), dict):
        raise UserInputError(f"{origin}: {key} is a section set by an earlier item")
    node[parts[-1]] = value


def parse_config_items(items: Sequence[str]) -> dict:
    """``key=value`` items (dotted keys allowed, values read as YAML) as a nested dict."""
    tree: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserInputError(f"--config {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise UserInputError(f"--config {item!r}: the value is not valid YAML ({err})") from err
        _set_dotted(tree, key.strip(), value, f"--config {item!r}")
    return tree


def config_overrides(
    config_items: Sequence[str] = (), configfiles: Sequence[str | Path] = (), seed_key: str = DEFAULT_SEED_KEY
) -> dict:
    """What every run changes in the committed config, besides the seed: the identity a reused run must match.

    Config files are named by absolute path and content hash, so an edited file makes the runs stale.
    """
    tree = parse_config_items(config_items)  # validates the items
    _set_dotted({}, seed_key, 0, f"seed key {seed_key!r}")
    node = tree
    for part in seed_key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    if node is not None:
        raise UserInputError(f"--config sets {seed_key}, which the benchmark sets per run (--seeds)")
    _set_dotted(copy.deepcopy(tree), seed_key, 0, f"--config and the seed key {seed_key!r}")
    files = []
    for f in configfiles:
        path = Path(f).expanduser().resolve()
        if not path.is_file():
            raise UserInputError(f"--configfile {f}: no such file")
        files.append({"path": str(path), "sha256": sha256_file(path)})
    return {"seed_key": seed_key, "config": list(config_items), "configfiles": files}


def overrides_tree(seed: int, overrides: Mapping) -> dict:
    """The nested config the run's ``config_overrides.yaml`` holds: the ``--config`` items plus the seed."""
    tree = parse_config_items(overrides.get("config", []))
    _set_dotted(tree, overrides.get("seed_key", DEFAULT_SEED_KEY), int(seed), "seed")
    return tree


# ---------------------------------------------------------------------------------------------- records
def finite_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def run_record(
    seed: int,
    minutes: float | None,
    metrics: Mapping | None,
    *,
    commit: str | None = None,
    command: Sequence[str] = (),
    started: str | None = None,
    config_overrides: Mapping | None = None,
    cores: str | None = None,
    hostname: str | None = None,
    cpu_count: int | None = None,
    status: str = "ok",
    log: str | Path | None = None,
    returncode: int | None = None,
    error: str | None = None,
) -> dict:
    """One run's record (``result.json``): headline metrics, the whole metrics summary and where it ran."""
    metrics = dict(metrics or {})
    record = {"seed": int(seed), "status": status, "minutes": minutes}
    for field, key in HEADLINE_METRICS.items():
        record[field] = finite_number(metrics.get(key)) if status == "ok" else None
    record.update(
        {
            "metrics": metrics,
            "commit": commit,
            "command": shlex.join(str(c) for c in command),
            "started": started,
            "hostname": hostname if hostname is not None else socket.gethostname(),
            "cpu_count": cpu_count if cpu_count is not None else os.cpu_count(),
            "cores": cores,
            "config_overrides": dict(config_overrides or {}),
            "log": str(log) if log is not None else None,
        }
    )
    if status != "ok":
        record["returncode"] = returncode
        record["error"] = error
    return record


def _stats(values) -> dict:
    numbers = [v for v in (finite_number(v) for v in values) if v is not None]
    if not numbers:
        return {"mean": None, "min": None, "max": None, "std": None, "n": 0}
    return {
        "mean": statistics.fmean(numbers),
        "min": min(numbers),
        "max": max(numbers),
        "std": statistics.stdev(numbers) if len(numbers) > 1 else None,
        "n": len(numbers),
    }


def aggregated_metric_keys(records: Sequence[Mapping]) -> list[str]:
    """Top-level metric keys numeric in at least one run and named ``*_mean``/``macro_f1`` (+ a suffix)."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in (record.get("metrics") or {}).items():
            if AGGREGATED_KEY.match(str(key)) and finite_number(value) is not None:
                keys.setdefault(str(key))
    return list(keys)


def summarise_runs(
    records: Sequence[Mapping],
    *,
    seeds: Sequence[int] | None = None,
    commit: str | None = None,
    config_overrides: Mapping | None = None,
) -> dict:
    """The benchmark's ``summary.json``: every run, and mean/min/max/std over the successful ones.

    ``aggregate`` holds the headline fields and the minutes; ``aggregate_metrics`` every metric key of
    :func:`aggregated_metric_keys` (so ``*_without_prior`` variants join in where the runs report them).
    Each entry also counts the runs it is computed from (``n``); ``std`` is the sample standard
    deviation (``None`` below two runs).
    """
    records = [dict(r) for r in records]
    ok = [r for r in records if r.get("status", "ok") == "ok"]
    failed = [int(r["seed"]) for r in records if r.get("status", "ok") != "ok"]
    if commit is None:
        commits = {r.get("commit") for r in records}
        commit = commits.pop() if len(commits) == 1 else None
    if config_overrides is None and records:
        config_overrides = records[0].get("config_overrides")
    return {
        "commit": commit,
        "seeds": [int(s) for s in (seeds if seeds is not None else [r["seed"] for r in records])],
        "config_overrides": dict(config_overrides or {}),
        "n_runs": len(records),
        "n_ok": len(ok),
        "failed_seeds": failed,
        "runs": records,
        "aggregate": {field: _stats(r.get(field) for r in ok) for field in AGGREGATE_FIELDS},
        "aggregate_metrics": {
            key: _stats((r.get("metrics") or {}).get(key) for r in ok) for key in aggregated_metric_keys(ok)
        },
    }


# ---------------------------------------------------------------------------------------------- resuming
def reusable_result(run_dir: str | Path, seed: int, overrides: Mapping, commit: str | None) -> dict | None:
    """The run's ``result.json`` when it was measured with this seed, these overrides and this commit."""
    path = Path(run_dir) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or record.get("status", "ok") != "ok":
        return None
    same = (
        record.get("seed") == int(seed)
        and record.get("config_overrides") == json.loads(json.dumps(dict(overrides)))
        and (commit is None or record.get("commit") == commit)
    )
    return record if same else None


# ---------------------------------------------------------------------------------------------- one run
def default_snakemake() -> Path:
    """The ``snakemake`` beside the running Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "snakemake"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("snakemake")
    if found is None:
        raise UserInputError(f"snakemake not found beside {sys.executable} nor on PATH (use --snakemake PATH)")
    return Path(found)


def log_tail(path: Path, n: int = 15) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_seed(
    seed: int,
    *,
    repo_root: str | Path,
    out_dir: str | Path,
    snakemake: str | Path,
    cores: str = "all",
    overrides: Mapping,
    commit: str,
    reuse: bool = True,
    echo: Callable[[str], None] = print,
) -> dict:
    """One benchmark run: reuse its ``result.json`` or run the workflow in a fresh copy of HEAD.

    Returns the run's record, with ``reused`` added; a failed run's record has ``status`` ``"failed"``
    and leaves no ``result.json`` (so the next invocation runs it again).
    """
    run_dir = Path(out_dir) / "runs" / f"seed_{int(seed)}"
    if reuse:
        previous = reusable_result(run_dir, seed, overrides, commit)
        if previous is not None:
            echo(f"  reused {run_dir / RESULT_FILE} (same seed, config overrides and commit)")
            return {**previous, "reused": True}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULT_FILE).unlink(missing_ok=True)
    workdir = export_committed_tree(repo_root, run_dir / "repo")
    overrides_file = run_dir / OVERRIDES_FILE
    overrides_file.write_text(yaml.safe_dump(overrides_tree(seed, overrides), sort_keys=False))
    configfiles = [f["path"] for f in overrides.get("configfiles", [])]
    command = [str(snakemake), "--cores", str(cores), "--configfile", *configfiles, str(overrides_file.resolve())]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str((workdir / "src").resolve()), env.get("PYTHONPATH")) if p)
    log_path = run_dir / LOG_FILE
    started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    common = {
        "commit": commit,
        "command": command,
        "started": started,
        "config_overrides": overrides,
        "cores": str(cores),
        "log": log_path,
    }

    returncode, minutes = run_to_log(command, workdir, env, log_path)

    metrics_path = workdir / METRICS_FILE
    if returncode != 0:
        error = f"snakemake exited with {returncode}" if returncode is not None else "snakemake did not start"
        return {
            **run_record(seed, minutes, None, status="failed", returncode=returncode, error=error, **common),
            "reused": False,
            "log_tail": log_tail(log_path),
        }
    try:
        metrics = json.loads(metrics_path.read_text())
        if not isinstance(metrics, dict):
            raise TypeError("not a JSON object")
    except (OSError, ValueError, TypeError) as err:
        return {
            **run_record(
                seed,
                minutes,
                None,
                status="failed",
                returncode=returncode,
                error=f"no readable {METRICS_FILE} after the run ({err})",
                **common,
            ),
            "reused": False,
            "log_tail": log_tail(log_path),
        }
    record = run_record(seed, minutes, metrics, **common)
    write_json(run_dir / RESULT_FILE, record)
    return {**record, "reused": False}


def run_to_log(command: Sequence[str], workdir: Path, env: Mapping, log_path: Path) -> tuple[int | None, float]:
    """Run Snakemake's ``command`` in ``workdir`` with its output in ``log_path`` (headed by the command);
    (return code, None when it could not start; minutes)."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        log.write(f"# {shlex.join(command)}\n# in {workdir}\n")
        log.flush()
        try:
            returncode = subprocess.run(
                command, check=False, cwd=workdir, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            ).returncode
        except OSError as err:
            log.write(f"could not start snakemake: {err}\n")
            returncode = None
    return returncode, (time.perf_counter() - start) / 60.0


def fmt_number(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv, usage: str) -> argparse.Namespace:
    """The command line's arguments; ``usage`` (the script's docstring) is its help text."""
    parser = argparse.ArgumentParser(
        description=usage.split("\n\n")[0],
        epilog=usage.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[1, 2, 3], help="one run per seed, in this order (default: 1 2 3)"
    )
    parser.add_argument("--cores", default="all", help="snakemake --cores of each run (default: all)")
    parser.add_argument(
        "--configfile",
        action="extend",
        nargs="+",
        default=[],
        metavar="FILE",
        help="extra Snakemake config files for every run (merged over config/config.yaml)",
    )
    parser.add_argument(
        "--config",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="config values for every run; dotted keys (training.stage1.num_epochs=5), values read as YAML",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default: <repository>/results/benchmark/learning)"
    )
    parser.add_argument(
        "--snakemake",
        type=Path,
        default=None,
        metavar="PATH",
        help="the snakemake executable (default: the one beside this Python, else PATH)",
    )
    parser.add_argument(
        "--seed-key",
        default=DEFAULT_SEED_KEY,
        help=f"config key the seed is written to (default: {DEFAULT_SEED_KEY})",
    )
    parser.add_argument("--no-reuse", action="store_true", help="run every seed again, ignoring result.json")
    return parser.parse_args(argv)


def describe_run(record: dict) -> str:
    if record.get("status") != "ok":
        return f"FAILED ({record.get('error')}) after {record['minutes']:.1f} min; log: {record.get('log')}"
    return (
        f"whole Dice {fmt_number(record['whole_dice'])}, lesion Dice {fmt_number(record['lesion_dice'])}, "
        f"macro-F1 {fmt_number(record['macro_f1'])}, {record['minutes']:.1f} min"
        + (" (reused)" if record.get("reused") else "")
    )


def main(argv, *, usage: str, script_repo: Path, plot: Callable) -> int:
    """The command line of ``workflow/scripts/benchmark_learning.py`` (``usage``, the checkout it lies in), which
    hands in ``plot``, the report's figure of the summary; returns the exit code."""
    args = parse_args(argv, usage)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserInputError(f"--seeds {args.seeds}: each seed once")
    root = find_repo_root(script_repo)
    commit = head_commit(root)
    dirty = uncommitted_changes(root)
    if dirty:
        shown = "\n".join(f"    {line}" for line in dirty[:20]) + ("\n    ..." if len(dirty) > 20 else "")
        print(
            f"warning: {len(dirty)} uncommitted change(s) in {root} are NOT measured "
            f"(the runs use the committed tree at {commit[:8]}):\n{shown}",
            file=sys.stderr,
            flush=True,
        )
    snakemake = args.snakemake.resolve() if args.snakemake else default_snakemake()
    if not snakemake.is_file():
        raise UserInputError(f"--snakemake {snakemake}: no such file")
    overrides = config_overrides(args.config, args.configfile, args.seed_key)
    out = (args.out if args.out is not None else root / "results" / "benchmark" / "learning").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"learning benchmark of commit {commit[:8]} ({root}): seeds {args.seeds}, output {out}", flush=True)

    records = []
    for i, seed in enumerate(args.seeds, start=1):
        print(f"run {i}/{len(args.seeds)} (seed {seed}) ...", flush=True)
        record = run_seed(
            seed,
            repo_root=root,
            out_dir=out,
            snakemake=snakemake,
            cores=args.cores,
            overrides=overrides,
            commit=commit,
            reuse=not args.no_reuse,
            echo=lambda line: print(line, flush=True),
        )
        print(f"run {i}/{len(args.seeds)} (seed {seed}): {describe_run(record)}", flush=True)
        if record.get("status") != "ok" and record.get("log_tail"):
            print(
                "  last lines of the log:\n" + "\n".join(f"  | {line}" for line in record["log_tail"].splitlines()),
                flush=True,
            )
        records.append(record)

    summary = summarise_runs(records, seeds=args.seeds, commit=commit, config_overrides=overrides)
    write_json(out / "summary.json", summary)
    plot(summary, out / "summary.png", DEFAULT_TARGETS)
    for field in AGGREGATE_FIELDS:
        stats = summary["aggregate"][field]
        print(
            f"{field}: mean {fmt_number(stats['mean'])}, min {fmt_number(stats['min'])}, "
            f"max {fmt_number(stats['max'])} over {stats['n']} run(s)",
            flush=True,
        )
    print(f"wrote {out / 'summary.json'} and {out / 'summary.png'}", flush=True)
    if summary["failed_seeds"]:
        print(f"failed seeds: {summary['failed_seeds']} (logs under {out / 'runs'})", file=sys.stderr, flush=True)
        return 1
    return 0
