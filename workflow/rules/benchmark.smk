rule benchmark_inference:
    input:
        models=stage2_checkpoints(),
        raw_dataset=RAW_DATASET,
        case_table="results/dataset/case_table.csv",
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
        folds=FOLDS,
        checkpoint=INFERENCE_CHECKPOINT,
        inference=config["inference"],
        benchmark=config["benchmark"],
    script:
        "../scripts/benchmark_inference.py"


# Not part of `rule all`: run it as `snakemake results/benchmark/real_scale/summary.json`.
rule benchmark_real_scale:
    input:
        quiz_dir=config["benchmark"]["real_scale_quiz_dir"],
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
        dataset_id=config["nnunet"]["dataset_id"] + 1,
        planner=config["nnunet"]["planner"],
        plans_name=config["nnunet"]["plans_name"],
        inference=config["inference"],
        benchmark=config["benchmark"],
    script:
        "../scripts/benchmark_real_scale.py"


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
