"""Rule plot: one chart (sftrl.plots) from its tables, as HTML (offline), PNG and SVG."""

from sftrl import plots
from sftrl.logs import job_log
from sftrl.tables import read_table

sm = snakemake  # noqa: F821 (injected by Snakemake)


def table(name):
    path = sm.input.get(name)
    return None if path is None else read_table(path)


with job_log(sm.log[0]):
    name = sm.wildcards.plot
    charts = {
        "sft-trajectory": lambda: plots.sft_trajectory(table("trajectory"), table("rl"), table("trajectory_seeds")),
        "rl-recovery": lambda: plots.rl_recovery(table("rl"), table("rl_seeds")),
        "stages": lambda: plots.stages(table("stages")),
        "sigma-change": lambda: plots.sigma_change(table("profile")),
        "principal-angles": lambda: plots.principal_angles(table("profile"), table("summary")),
        "uv-merge": lambda: plots.uv_merge(table("uv")),
        "layer-reset": lambda: plots.layer_reset(table("layers")),
    }
    chart = charts[name]()
    plots.save_chart(chart, html=sm.output.html, png=sm.output.png, svg=sm.output.svg)
    plots.check_offline_html(sm.output.html)
    print(f"{name}: wrote {sm.output.html}, {sm.output.png}, {sm.output.svg}")
