rule make_synthetic_quiz:
    output:
        quiz_dir=directory(SYNTHETIC_QUIZ_DIR),
    log:
        "logs/make_synthetic_quiz.log",
    benchmark:
        "benchmarks/make_synthetic_quiz.tsv"
    conda:
        "../../envs/data.yaml"
    threads: preprocess_threads()
    params:
        seed=config["synthetic"]["seed"],
        counts=config["synthetic"]["counts"],
        preset=config["synthetic"]["preset"],
    script:
        "../scripts/make_synthetic_quiz.py"


# The labelled cases of the workflow's dataset and, for the real-scale benchmark, of the real sample (a partial quiz
# folder). The split params are read by the conversion only where they change the splits.
rule convert_quiz_to_nnunet:
    input:
        quiz=labelled_quiz_files,
    output:
        raw_dataset=directory(raw_dataset("{dataset}")),
        splits=dataset_tables("{dataset}")["splits"],
        case_table=dataset_tables("{dataset}")["case_table"],
    log:
        "logs/convert_quiz_to_nnunet_{dataset}.log",
    benchmark:
        "benchmarks/convert_quiz_to_nnunet_{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: preprocess_threads()
    resources:
        mem_mb=config["resources"]["preprocess_mem_mb"],
    params:
        quiz_dir=lambda wildcards: quiz_dir(wildcards.dataset),
        split_scheme=lambda wildcards: (
            "official"
            if wildcards.dataset == REAL_SCALE_DATASET
            else config["training"]["split"]
        ),
        k=lambda wildcards: (
            config["training"]["k"]
            if wildcards.dataset != REAL_SCALE_DATASET
            and config["training"]["split"] == "kfold"
            else None
        ),
        split_seed=config["training"]["split_seed"],
        selection_fraction=config["training"]["selection_fraction"],
        labels=config["training"]["labels"],
    script:
        "../scripts/convert_quiz_to_nnunet.py"


# The test images on their own: a new test image reruns its prediction, never the conversion that training reads.
rule convert_test_images:
    input:
        quiz=test_quiz_files,
    output:
        images=directory(test_images("{dataset}")),
        test_cases=dataset_tables("{dataset}")["test_cases"],
    log:
        "logs/convert_test_images_{dataset}.log",
    benchmark:
        "benchmarks/convert_test_images_{dataset}.tsv"
    conda:
        "../../envs/data.yaml"
    threads: preprocess_threads()
    resources:
        mem_mb=config["resources"]["preprocess_mem_mb"],
    params:
        quiz_dir=lambda wildcards: quiz_dir(wildcards.dataset),
    script:
        "../scripts/convert_test_images.py"
