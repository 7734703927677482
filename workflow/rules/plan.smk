rule plan_and_preprocess:
    input:
        raw_dataset=raw_dataset("{dataset}"),
        splits=dataset_tables("{dataset}")["splits"],
    output:
        plans=preprocessed("{dataset}")["plans"],
        dataset_json=preprocessed("{dataset}")["dataset_json"],
        splits=preprocessed("{dataset}")["splits"],
        data=touch(preprocessed("{dataset}")["data"]),
    log:
        "logs/plan_and_preprocess_{dataset}.log",
    benchmark:
        "benchmarks/plan_and_preprocess_{dataset}.tsv"
    conda:
        "../../envs/nnunet.yaml"
    threads: preprocess_threads()
    resources:
        mem_mb=config["resources"]["preprocess_mem_mb"],
    params:
        nnunet_root=lambda wildcards, output: nnunet_root_of(output.plans),
        planner=config["nnunet"]["planner"],
        plans_name=PLANS_NAME,
        cpu_configuration=config["nnunet"]["cpu_configuration"],
        configuration=config["nnunet"]["configuration"],
        num_gpus=config["training"]["num_gpus"],
        batch_size_per_gpu=config["nnunet"]["batch_size_per_gpu"],
    script:
        "../scripts/plan_and_preprocess.py"
