# Multi-task nnU-Net v2 on 3D pancreas CT: quiz data -> nnU-Net raw -> planned and preprocessed data -> ...
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/plan.smk"
include: "workflow/rules/train.smk"


rule all:
    input:
        all_targets(),
    default_target: True
