rule train_stage1:
    input:
        preprocessed=PREPROCESSED_DATASET,
        case_table="results/dataset/case_table.csv",
    output:
        checkpoint=f"{TRAINED_DATASET}/{STAGE1_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
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
        dataset_id=config["nnunet"]["dataset_id"],
        configuration=config["nnunet"]["configuration"],
        plans_name=config["nnunet"]["plans_name"],
        trainer=STAGE1_TRAINER,
        settings=config["training"]["stage1"],
        training=config["training"],
        wandb=config["wandb"],
    script:
        "../scripts/train_nnunet.py"


rule train_stage2:
    input:
        preprocessed=PREPROCESSED_DATASET,
        case_table="results/dataset/case_table.csv",
        stage1=f"{TRAINED_DATASET}/{STAGE1_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
    output:
        checkpoint=f"{TRAINED_DATASET}/{STAGE2_FOLDER}/fold_{{fold}}/checkpoint_final.pth",
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
        dataset_id=config["nnunet"]["dataset_id"],
        configuration=config["nnunet"]["configuration"],
        plans_name=config["nnunet"]["plans_name"],
        trainer=STAGE2_TRAINER,
        settings=config["training"]["stage2"],
        training=config["training"],
        wandb=config["wandb"],
    script:
        "../scripts/train_nnunet.py"
