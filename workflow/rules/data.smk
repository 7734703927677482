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
    script:
        "../scripts/make_synthetic_quiz.py"


rule convert_quiz_to_nnunet:
    input:
        quiz=quiz_input(),
    output:
        raw_dataset=directory(RAW_DATASET),
        splits="results/dataset/splits_final.json",
        case_table="results/dataset/case_table.csv",
    log:
        "logs/convert_quiz_to_nnunet.log",
    benchmark:
        "benchmarks/convert_quiz_to_nnunet.tsv"
    conda:
        "../../envs/data.yaml"
    threads: preprocess_threads()
    resources:
        mem_mb=config["resources"]["preprocess_mem_mb"],
    params:
        quiz_dir=lambda wildcards: quiz_dir(),
        dataset_name=DATASET,
        split_scheme=config["training"]["split"],
        k=config["training"]["k"],
    script:
        "../scripts/convert_quiz_to_nnunet.py"
