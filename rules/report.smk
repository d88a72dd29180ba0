# Plots (altair -> HTML, PNG, SVG) and the Snakemake report: `snakemake --report results/<study>/report.html`.
# Each plot's SVG and each table (as an HTML page) is a report item; captions are in report/.


rule plot:
    input:
        unpack(plot_inputs),
    output:
        html=R("plots/{plot}.html"),
        png=R("plots/{plot}.png"),
        svg=report(
            R("plots/{plot}.svg"),
            caption="../report/plots.rst",
            category=lambda wc: study.RESULT[wc.plot].category,
            subcategory="Plots",
            labels=lambda wc: {"result": study.RESULT[wc.plot].title, "kind": "plot"},
        ),
    log:
        R("logs/plots/{plot}.log"),
    wildcard_constraints:
        plot="|".join(study.PLOTS),
    conda:
        "../envs/plotting.yaml"
    resources:
        **res("tables"),
    params:
        code=code("plot_chart.py"),
    script:
        "../scripts/plot_chart.py"


# Job records: the benchmark: files of every job that trains, evaluates or decomposes, as a
# table (and a page of the report). Its inputs are the study's results, so it runs last.
rule table_benchmarks:
    input:
        eval_targets(),
        table_targets(),
        spectrum_targets,
        edit_eval_targets,
    output:
        csv=R("benchmarks/summary.csv"),
        md=R("benchmarks/summary.md"),
    log:
        R("logs/tables/benchmarks.log"),
    conda:
        "../envs/analysis.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_benchmarks.py"),
        seeds=SEEDS,  # whose records: a removed seed's directory stays on disk, out of the table
    script:
        "../scripts/table_benchmarks.py"


rule report_table:
    input:
        lambda wc: R(f"{study.RESULT[wc.table].path}.csv"),
    output:
        report(
            R("report/tables/{table}.html"),
            caption="../report/tables.rst",
            category=lambda wc: study.RESULT[wc.table].category,
            subcategory="Tables",
            labels=lambda wc: {
                "result": study.RESULT[wc.table].title,
                "kind": "table",
            },
        ),
    log:
        R("logs/report/{table}.log"),
    wildcard_constraints:
        table="|".join(study.TABLES),
    conda:
        "../envs/plotting.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_report_html.py"),
        title=lambda wc: study.RESULT[wc.table].title,
    script:
        "../scripts/table_report_html.py"
