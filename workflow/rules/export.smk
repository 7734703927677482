# The trained model as one portable archive (not part of `rule all`): `snakemake results/model/pancreas_mtl_model.zip`.
rule export_model:
    input:
        **model_files(PREDICTION_MODEL, FOLDS, INFERENCE_CHECKPOINT),
        **(
            {"metrics": evaluation_outputs()["summary"]}
            if FOLDER.evaluate_validation
            else {}
        ),
        preprocessed_plans=preprocessed(DATASET)["plans"],
        case_table=dataset_tables(DATASET)["case_table"],
        splits=dataset_tables(DATASET)["splits"],
    output:
        archive="results/model/pancreas_mtl_model.zip",
    log:
        "logs/export_model.log",
    benchmark:
        "benchmarks/export_model.tsv"
    conda:
        "../../envs/nnunet.yaml"
    params:
        # nnU-Net's planning writes the fingerprint beside the plans (no rule declares it)
        fingerprint=lambda wildcards, input: str(
            Path(input.preprocessed_plans).with_name("dataset_fingerprint.json")
        ),
        folds=FOLDS,
        checkpoint=INFERENCE_CHECKPOINT,
        stage="stage1" if SEGMENTATION_ONLY else "stage2",
        select_checkpoints=FOLDER.select_checkpoints,
        inference=config["inference"],
        lesion_prior=config["postprocessing"]["lesion_presence_prior"],
        config=config,
        # asked only when the archive is made, not at every start-up (None outside a git checkout)
        commit=lambda wildcards: head_commit_or_none(workflow.basedir),
    script:
        "../scripts/export_model.py"
