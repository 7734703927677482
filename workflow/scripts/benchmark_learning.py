"""The repeated-run learning benchmark: the whole demo workflow, end to end, once per seed.

Not a test and not a rule: a plain command line run from a git checkout (it takes ~18 minutes per seed on a
2-core CPU machine)::

    .venv/bin/python workflow/scripts/benchmark_learning.py --seeds 1 2 3 [--cores all]
        [--configfile extra.yaml ...] [--config key=value ...] [--out results/benchmark/learning]
        [--snakemake PATH] [--seed-key training.seed]

Each seed runs ``snakemake --cores <cores>`` in a fresh copy of the committed tree at HEAD
(``git archive HEAD | tar -x`` into ``<out>/runs/seed_<S>/repo``), i.e. what a fresh clone does;
uncommitted changes are not measured (a warning lists them). The seed (at ``--seed-key``) and the
``--config`` items (dotted keys allowed, values read as YAML) go to Snakemake as one generated config file,
``<out>/runs/seed_<S>/config_overrides.yaml``, after the ``--configfile`` files; Snakemake's log is
``<out>/runs/seed_<S>/snakemake.log``.

A successful run leaves ``<out>/runs/seed_<S>/result.json``; a later invocation with the same seed, config
overrides and commit reuses it instead of running again. A failed run is reported (its log path), listed
under ``failed_seeds`` and the script exits 1 after the remaining seeds.

Writes ``<out>/summary.json`` (every run, mean/min/max/std over the successful ones) and
``<out>/summary.png`` (metrics per seed against the targets, minutes per run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SCRIPT_REPO = Path(__file__).resolve().parents[2]


def _package():
    """``pancreas_mtl.benchmarks.learning`` from this checkout's src/ (before an installed copy)."""
    src = str(SCRIPT_REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from pancreas_mtl.benchmarks import learning

    return learning


def parse_args(argv=None) -> argparse.Namespace:
    lb = _package()
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
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
        default=lb.DEFAULT_SEED_KEY,
        help=f"config key the seed is written to (default: {lb.DEFAULT_SEED_KEY})",
    )
    parser.add_argument("--no-reuse", action="store_true", help="run every seed again, ignoring result.json")
    return parser.parse_args(argv)


def _describe(record: dict) -> str:
    lb = _package()
    if record.get("status") != "ok":
        return f"FAILED ({record.get('error')}) after {record['minutes']:.1f} min; log: {record.get('log')}"
    return (
        f"whole Dice {lb.fmt_number(record['whole_dice'])}, lesion Dice {lb.fmt_number(record['lesion_dice'])}, "
        f"macro-F1 {lb.fmt_number(record['macro_f1'])}, {record['minutes']:.1f} min"
        + (" (reused)" if record.get("reused") else "")
    )


def main(argv=None) -> int:
    lb = _package()
    args = parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise lb.UserInputError(f"--seeds {args.seeds}: each seed once")
    root = lb.find_repo_root(SCRIPT_REPO)
    commit = lb.head_commit(root)
    dirty = lb.uncommitted_changes(root)
    if dirty:
        shown = "\n".join(f"    {line}" for line in dirty[:20]) + ("\n    ..." if len(dirty) > 20 else "")
        print(
            f"warning: {len(dirty)} uncommitted change(s) in {root} are NOT measured "
            f"(the runs use the committed tree at {commit[:8]}):\n{shown}",
            file=sys.stderr,
            flush=True,
        )
    snakemake = args.snakemake.resolve() if args.snakemake else lb.default_snakemake()
    if not snakemake.is_file():
        raise lb.UserInputError(f"--snakemake {snakemake}: no such file")
    overrides = lb.config_overrides(args.config, args.configfile, args.seed_key)
    out = (args.out if args.out is not None else root / "results" / "benchmark" / "learning").resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"learning benchmark of commit {commit[:8]} ({root}): seeds {args.seeds}, output {out}", flush=True)

    records = []
    for i, seed in enumerate(args.seeds, start=1):
        print(f"run {i}/{len(args.seeds)} (seed {seed}) ...", flush=True)
        record = lb.run_seed(
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
        print(f"run {i}/{len(args.seeds)} (seed {seed}): {_describe(record)}", flush=True)
        if record.get("status") != "ok" and record.get("log_tail"):
            print(
                "  last lines of the log:\n" + "\n".join(f"  | {line}" for line in record["log_tail"].splitlines()),
                flush=True,
            )
        records.append(record)

    summary = lb.summarise_runs(records, seeds=args.seeds, commit=commit, config_overrides=overrides)
    lb.write_json(out / "summary.json", summary)
    from pancreas_mtl.report import plots  # from this checkout's src/, put first on the path by _package()

    plots.plot_learning_summary(summary, out / "summary.png", lb.DEFAULT_TARGETS)
    for field in lb.AGGREGATE_FIELDS:
        stats = summary["aggregate"][field]
        print(
            f"{field}: mean {lb.fmt_number(stats['mean'])}, min {lb.fmt_number(stats['min'])}, "
            f"max {lb.fmt_number(stats['max'])} over {stats['n']} run(s)",
            flush=True,
        )
    print(f"wrote {out / 'summary.json'} and {out / 'summary.png'}", flush=True)
    if summary["failed_seeds"]:
        print(f"failed seeds: {summary['failed_seeds']} (logs under {out / 'runs'})", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except _package().UserInputError as err:
        print(f"error: {err.render()}", file=sys.stderr)
        sys.exit(2)
