from pathlib import Path

from pancreas_mtl.benchmarks.real_ct import run_benchmark
from pancreas_mtl.report.plots import plot_real_ct_summary
from pancreas_mtl.script_logging import run_logged


def main():
    params = snakemake.params
    run_benchmark(
        quiz_dir=snakemake.input.quiz_dir,
        rows=params.rows,
        seeds=params.seeds,
        evaluation_cases=params.evaluation_cases,
        split_seed=params.split_seed,
        configfile=snakemake.input.configfile,
        workflow_dir=params.workflow_dir,
        out_dir=Path(snakemake.output.summary).parent,
        cores=snakemake.threads,
        use_conda=params.use_conda,
        plot=plot_real_ct_summary,
    )


if __name__ == "__main__":
    run_logged(main, snakemake.log[0])
