rule plan_and_preprocess:
    input:
        raw_dataset=RAW_DATASET,
        splits="results/dataset/splits_final.json",
    output:
        preprocessed=directory(PREPROCESSED_DATASET),
    log:
        "logs/plan_and_preprocess.log",
    benchmark:
        "benchmarks/plan_and_preprocess.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: preprocess_threads()
    resources:
        mem_mb=config["resources"]["preprocess_mem_mb"],
    params:
        dataset_id=config["nnunet"]["dataset_id"],
        planner=config["nnunet"]["planner"],
        plans_name=config["nnunet"]["plans_name"],
        cpu_configuration=config["nnunet"]["cpu_configuration"],
    script:
        "../scripts/plan_and_preprocess.py"
