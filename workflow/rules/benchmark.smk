rule benchmark_inference:
    input:
        **model_files(STAGE2_MODEL, FOLDS, INFERENCE_CHECKPOINT),
        **split_cases(DATASET, config["benchmark"]["split"]),
    output:
        summary="results/benchmark/summary.json",
        per_case="results/benchmark/per_case.csv",
    log:
        "logs/benchmark_inference.log",
    benchmark:
        "benchmarks/benchmark_inference.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: config["resources"]["predict_threads"]
    resources:
        mem_mb=config["resources"]["predict_mem_mb"],
        runtime=config["resources"]["predict_runtime_min"],
        gpu=config["resources"]["predict_gpus"],
    params:
        model_folder=lambda wildcards, input: model_folder_of(input.plans),
        folds=FOLDS,
        checkpoint=INFERENCE_CHECKPOINT,
        split=config["benchmark"]["split"],
        max_cases=config["benchmark"]["max_cases"],
        repeats=config["benchmark"]["repeats"],
        inference=config["inference"],
        setting="demo",
        with_agreement=True,
        note=(
            f"trained model ({INFERENCE_CHECKPOINT}), "
            f"{config['benchmark']['split']} cases"
        ),
    script:
        "../scripts/benchmark_inference.py"


# The real-scale benchmark is not part of `rule all`:
# run it as `snakemake results/benchmark/real_scale/summary.json`.
rule make_untrained_model:
    input:
        plans=preprocessed(REAL_SCALE_DATASET)["plans"],
        dataset_json=preprocessed(REAL_SCALE_DATASET)["dataset_json"],
    output:
        **model_files(REAL_SCALE_MODEL, [0], CHECKPOINT_FILES["final"]),
    log:
        "logs/make_untrained_model.log",
    benchmark:
        "benchmarks/make_untrained_model.tsv"
    conda:
        "../../envs/nnunet.yaml"
    params:
        model_folder=lambda wildcards, output: model_folder_of(output.plans),
        configuration="3d_fullres",
        head=config["training"]["head"],
    script:
        "../scripts/make_untrained_model.py"


rule benchmark_real_scale:
    input:
        **model_files(REAL_SCALE_MODEL, [0], CHECKPOINT_FILES["final"]),
        **split_cases(REAL_SCALE_DATASET, "test"),
    output:
        summary="results/benchmark/real_scale/summary.json",
        per_case="results/benchmark/real_scale/per_case.csv",
    log:
        "logs/benchmark_real_scale.log",
    benchmark:
        "benchmarks/benchmark_real_scale.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: config["resources"]["predict_threads"]
    resources:
        mem_mb=config["resources"]["predict_mem_mb"],
        runtime=config["resources"]["predict_runtime_min"],
        gpu=config["resources"]["predict_gpus"],
    params:
        model_folder=lambda wildcards, input: model_folder_of(input.plans),
        folds=[0],
        checkpoint=CHECKPOINT_FILES["final"],
        split="test",
        max_cases=config["benchmark"]["real_scale_max_cases"],
        repeats=config["benchmark"]["repeats"],
        inference=config["inference"],
        setting="real_scale",
        with_agreement=False,
        note="",
    script:
        "../scripts/benchmark_inference.py"


rule plot_real_scale_benchmark:
    input:
        summary="results/benchmark/real_scale/summary.json",
        per_case="results/benchmark/real_scale/per_case.csv",
    output:
        chart=report(
            "results/benchmark/real_scale/benchmark.png",
            caption="../report/benchmark_real_scale.rst",
            category="Inference benchmark",
        ),
    log:
        "logs/plot_real_scale_benchmark.log",
    benchmark:
        "benchmarks/plot_real_scale_benchmark.tsv"
    conda:
        "../../envs/evaluation.yaml"
    script:
        "../scripts/plot_benchmark.py"


# The real-CT segmentation benchmark is not part of `rule all`: run it as
# `snakemake results/benchmark/real_ct/summary.json`. Each row and seed trains stage 1 in a copy of the workflow
# (under results/benchmark/real_ct/runs/), so it asks for what a training job asks for. (Not `workflow.cores`:
# Snakemake refuses to parse that without --cores, as in `--report` and with the SLURM profile's `jobs:`.)
rule benchmark_real_ct:
    input:
        quiz_dir=config["benchmark"]["real_ct"]["quiz_dir"],
        configfile=config["benchmark"]["real_ct"]["configfile"],
    output:
        summary="results/benchmark/real_ct/summary.json",
        per_case="results/benchmark/real_ct/per_case.csv",
        chart=report(
            "results/benchmark/real_ct/dice_vs_minutes.png",
            caption="../report/benchmark_real_ct.rst",
            category="Real-CT benchmark",
        ),
    log:
        "logs/benchmark_real_ct.log",
    benchmark:
        "benchmarks/benchmark_real_ct.tsv"
    conda:
        "../../envs/benchmark.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"]
        * len(config["benchmark"]["real_ct"]["rows"])
        * len(config["benchmark"]["real_ct"]["seeds"]),
    params:
        rows=config["benchmark"]["real_ct"]["rows"],
        seeds=config["benchmark"]["real_ct"]["seeds"],
        evaluation_cases=config["benchmark"]["real_ct"]["evaluation_cases"],
        split_seed=config["benchmark"]["real_ct"]["split_seed"],
        workflow_dir=workflow.basedir,
        use_conda=USE_CONDA,
    script:
        "../scripts/benchmark_real_ct.py"
