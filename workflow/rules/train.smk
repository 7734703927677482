rule train_stage1:
    input:
        **preprocessed(DATASET),
        case_table=dataset_tables(DATASET)["case_table"],
    output:
        checkpoints=checkpoint_files(STAGE1_MODEL, STAGE1_KEPT),
    log:
        "logs/train_stage1_fold{fold}.log",
    benchmark:
        "benchmarks/train_stage1_fold{fold}.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=config["resources"]["train_gpus"],
    params:
        stage="stage1",
        nnunet_root=lambda wildcards, input: nnunet_root_of(input.plans),
        dataset_id=config["nnunet"]["dataset_id"],
        configuration=TRAIN_CONFIGURATION,
        plans_name=PLANS_NAME,
        trainer=STAGE1_TRAINER,
        training=stage_training("stage1"),
        lesion_prior_threshold=LESION_PRIOR_THRESHOLD,
    script:
        "../scripts/train_nnunet.py"


rule train_stage2:
    input:
        **preprocessed(DATASET),
        case_table=dataset_tables(DATASET)["case_table"],
        stage1_checkpoint=f"{STAGE1_MODEL}/fold_{{fold}}/{STAGE2_INIT_CHECKPOINT}",
    output:
        checkpoints=checkpoint_files(STAGE2_MODEL, STAGE2_CHECKPOINTS),
    log:
        "logs/train_stage2_fold{fold}.log",
    benchmark:
        "benchmarks/train_stage2_fold{fold}.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=config["resources"]["train_gpus"],
    params:
        stage="stage2",
        nnunet_root=lambda wildcards, input: nnunet_root_of(input.plans),
        dataset_id=config["nnunet"]["dataset_id"],
        configuration=TRAIN_CONFIGURATION,
        plans_name=PLANS_NAME,
        trainer=STAGE2_TRAINER,
        training=stage_training("stage2"),
        lesion_prior_threshold=LESION_PRIOR_THRESHOLD,
    script:
        "../scripts/train_nnunet.py"


# nnU-Net's final validation of a trained fold (nnUNetv2_train --val), a job of its own: its failure or a time
# limit costs the validation, never the weights, and its rerun never trains.
rule final_validation:
    input:
        **preprocessed(DATASET),
        case_table=dataset_tables(DATASET)["case_table"],
        checkpoint=f"{TRAINED_DATASET}/{{model}}/fold_{{fold}}/{CHECKPOINT_FILES['final']}",
        stage1_checkpoint=lambda wildcards: (
            f"{STAGE1_MODEL}/fold_{wildcards.fold}/{STAGE2_INIT_CHECKPOINT}"
            if stage_of_model(wildcards.model) == "stage2"
            else []
        ),
    output:
        summary=f"{TRAINED_DATASET}/{{model}}/fold_{{fold}}/validation/summary.json",
    log:
        "logs/final_validation_{model}_fold{fold}.log",
    benchmark:
        "benchmarks/final_validation_{model}_fold{fold}.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: config["resources"]["train_threads"]
    resources:
        mem_mb=config["resources"]["train_mem_mb"],
        runtime=config["resources"]["train_runtime_min"],
        gpu=config["resources"]["train_gpus"],
    params:
        stage=lambda wildcards: stage_of_model(wildcards.model),
        trainer=lambda wildcards: trainer_of_model(wildcards.model),
        nnunet_root=lambda wildcards, input: nnunet_root_of(input.plans),
        dataset_id=config["nnunet"]["dataset_id"],
        configuration=TRAIN_CONFIGURATION,
        plans_name=PLANS_NAME,
        training=lambda wildcards: stage_training(stage_of_model(wildcards.model)),
        lesion_prior_threshold=LESION_PRIOR_THRESHOLD,
    script:
        "../scripts/validate_nnunet.py"


# What a predictor reads beside the weights. nnU-Net's trainer writes the same two files at its start; this
# rule writes them from the plans, so that prediction can name them as inputs (the folds share them).
rule model_folder_metadata:
    input:
        plans=preprocessed(DATASET)["plans"],
        dataset_json=preprocessed(DATASET)["dataset_json"],
    output:
        plans=f"{TRAINED_DATASET}/{{model}}/plans.json",
        dataset_json=f"{TRAINED_DATASET}/{{model}}/dataset.json",
    log:
        "logs/model_folder_metadata_{model}.log",
    benchmark:
        "benchmarks/model_folder_metadata_{model}.tsv"
    conda:
        "../../envs/data.yaml"
    shell:
        "(cp -v {input.plans} {output.plans} && cp -v {input.dataset_json} {output.dataset_json}) > {log} 2>&1"
