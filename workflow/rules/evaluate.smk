rule evaluate_validation:
    input:
        predictions="results/predictions/validation",
        case_table=dataset_tables(DATASET)["case_table"],
        splits=dataset_tables(DATASET)["splits"],
        raw_dataset=raw_dataset(DATASET),
    output:
        **evaluation_outputs(),
    log:
        "logs/evaluate_validation.log",
    benchmark:
        "benchmarks/evaluate_validation.tsv"
    conda:
        "../../envs/evaluation.yaml"
    params:
        folds=FOLDS,
        nsd_tolerance_mm=config["evaluation"]["nsd_tolerance_mm"],
        classification=not SEGMENTATION_ONLY,
        extra={
            "checkpoint": INFERENCE_CHECKPOINT,
            "folds": FOLDS,
            "model": "stage1" if SEGMENTATION_ONLY else "stage2",
            "head": None if SEGMENTATION_ONLY else config["training"]["head"],
            "configuration": TRAIN_CONFIGURATION,
            "inference": config["inference"],
        },
    script:
        "../scripts/evaluate_predictions.py"
