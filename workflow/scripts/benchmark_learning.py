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

import sys
from pathlib import Path

SCRIPT_REPO = Path(__file__).resolve().parents[2]
# the package from this checkout's src/, before an installed copy
sys.path.insert(0, str(SCRIPT_REPO / "src"))

from pancreas_mtl.benchmarks import learning  # noqa: E402
from pancreas_mtl.errors import UserInputError  # noqa: E402
from pancreas_mtl.report import plots  # noqa: E402


def main(argv=None) -> int:
    return learning.main(argv, usage=__doc__, script_repo=SCRIPT_REPO, plot=plots.plot_learning_summary)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserInputError as err:
        print(f"error: {err.render()}", file=sys.stderr)
        sys.exit(2)
