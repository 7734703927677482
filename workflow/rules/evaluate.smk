rule evaluate_validation:
    input:
        predictions="results/predictions/validation",
        case_table=dataset_tables(DATASET)["case_table"],
        splits=dataset_tables(DATASET)["splits"],
        raw_dataset=raw_dataset(DATASET),
    output:
        summary="results/metrics/summary.json",
        per_case="results/metrics/segmentation_per_case.csv",
        segmentation="results/metrics/segmentation_summary.json",
        classification="results/metrics/classification.json",
        prior_effect="results/metrics/lesion_prior_effect.csv",
    log:
        "logs/evaluate_validation.log",
    benchmark:
        "benchmarks/evaluate_validation.tsv"
    conda:
        "../../envs/evaluation.yaml"
    params:
        folds=FOLDS,
        nsd_tolerance_mm=config["evaluation"]["nsd_tolerance_mm"],
        extra={
            "checkpoint": INFERENCE_CHECKPOINT,
            "folds": FOLDS,
            "head": config["training"]["head"],
            "configuration": TRAIN_CONFIGURATION,
            "inference": config["inference"],
        },
    script:
        "../scripts/evaluate_predictions.py"
