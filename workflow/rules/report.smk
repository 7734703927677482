rule report_plots:
    input:
        **report_plot_inputs(),
    output:
        **{
            name: report(path, caption=f"../report/{caption}", category=category)
            for name, (path, caption, category) in report_figures().items()
        },
    log:
        "logs/report_plots.log",
    benchmark:
        "benchmarks/report_plots.tsv"
    conda:
        "../../envs/evaluation.yaml"
    script:
        "../scripts/make_report_plots.py"
