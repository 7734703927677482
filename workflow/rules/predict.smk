rule predict_split:
    input:
        **model_files(PREDICTION_MODEL, FOLDS, INFERENCE_CHECKPOINT),
        cases=lambda wildcards: split_cases(DATASET, wildcards.split)["cases"],
        images=lambda wildcards: split_cases(DATASET, wildcards.split)["images"],
    output:
        predictions=directory("results/predictions/{split}"),
    log:
        "logs/predict_{split}.log",
    benchmark:
        "benchmarks/predict_{split}.tsv"
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
        classification=not SEGMENTATION_ONLY,
        inference=config["inference"],
        lesion_prior_threshold=LESION_PRIOR_THRESHOLD,
    script:
        "../scripts/predict_split.py"


rule subtype_results:
    input:
        predictions="results/predictions/test",
    output:
        subtypes="results/subtype_results.csv",
        probabilities="results/subtype_probabilities.csv",
    log:
        "logs/subtype_results.log",
    benchmark:
        "benchmarks/subtype_results.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/subtype_results.py"


rule submission_zip:
    input:
        subtypes="results/subtype_results.csv",
        predictions="results/predictions/test",
    output:
        archive="results/submission.zip",
    log:
        "logs/submission_zip.log",
    benchmark:
        "benchmarks/submission_zip.tsv"
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/submission_zip.py"
