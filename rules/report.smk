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
            category=lambda wc: RESULTS[wc.plot][0],
            subcategory="Plots",
            labels=lambda wc: {"result": RESULTS[wc.plot][1], "kind": "plot"},
        ),
    log:
        R("logs/plots/{plot}.log"),
    wildcard_constraints:
        plot="|".join(n for n in RESULTS if n not in ("spectrum", "benchmarks")),
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
    script:
        "../scripts/table_benchmarks.py"


rule report_table:
    input:
        lambda wc: R(
            "benchmarks/summary.csv"
            if wc.table == "benchmarks"
            else f"tables/{wc.table}.csv"
        ),
    output:
        report(
            R("report/tables/{table}.html"),
            caption="../report/tables.rst",
            category=lambda wc: RESULTS[wc.table][0],
            subcategory="Tables",
            labels=lambda wc: {"result": RESULTS[wc.table][1], "kind": "table"},
        ),
    log:
        R("logs/report/{table}.log"),
    wildcard_constraints:
        table="|".join(
            n for n in RESULTS if n not in ("sigma-change", "principal-angles")
        ),
    conda:
        "../envs/plotting.yaml"
    resources:
        **res("tables"),
    params:
        code=code("table_report_html.py"),
        title=lambda wc: RESULTS[wc.table][1],
    script:
        "../scripts/table_report_html.py"
