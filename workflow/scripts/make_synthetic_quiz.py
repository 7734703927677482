"""Rule make_synthetic_quiz: write the seeded synthetic quiz dataset (pancreas_mtl.data.synthetic)."""

from pancreas_mtl.data.synthetic import make_synthetic_quiz
from pancreas_mtl.script_logging import run_logged


def _preset(smk) -> str:
    """synthetic.preset: a rule param when the rule passes one (so that changing it reruns the rule),
    else the config's value, else "demo" (the schema's default)."""
    preset = getattr(smk.params, "preset", None)
    if preset is None:
        preset = (getattr(smk, "config", None) or {}).get("synthetic", {}).get("preset", "demo")
    return preset


def main():
    smk = snakemake
    make_synthetic_quiz(
        smk.output.quiz_dir,
        seed=smk.params.seed,
        counts=smk.params.counts,
        n_workers=smk.threads,
        preset=_preset(smk),
    )


run_logged(main, snakemake.log[0])
