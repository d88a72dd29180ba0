"""Result tables: tidy polars frames from evaluation summaries, training metrics and spectra,
written as CSV (every column, full precision) and a Markdown view; the report shows each table's
view as an HTML page rendered from the same data. Row order is always explicit (sorted), so the
same results give byte-identical tables.

One module per concern: :mod:`~sftrl.tables.summaries` (evaluation summaries, intervals, recovery
%, the peak-OOD checkpoint), :mod:`~sftrl.tables.training` (SFT trajectory, RL recovery, the RL
sweep, the stage table), :mod:`~sftrl.tables.spectra`, :mod:`~sftrl.tables.edits`, :mod:`~sftrl.tables.records` (job
records), :mod:`~sftrl.tables.seeds` (tables across seeds), :mod:`~sftrl.tables.findings` (the four
findings across seeds) and
:mod:`~sftrl.tables.render` (views, Markdown, report pages, files). Only polars is needed (the
table rules run in ``envs/analysis.yaml``). The names below are the package's interface.
"""

from sftrl.tables.edits import LAYER_RESET_MARKDOWN, UV_MERGE_MARKDOWN, edit_tables
from sftrl.tables.findings import FINDINGS_FOOTNOTE, FINDINGS_MARKDOWN, findings
from sftrl.tables.records import BENCHMARK_FOOTNOTE, BENCHMARK_MARKDOWN, benchmark_table
from sftrl.tables.render import cells, read_table, report_page, to_markdown, write_csv, write_table
from sftrl.tables.seeds import SEEDS_FOOTNOTE, combine_seeds, is_combined, read_seed_tables, seeds_view, t_interval
from sftrl.tables.spectra import SPECTRUM_MARKDOWN, pair_sort_key, spectrum_profile, spectrum_summary, split_pair
from sftrl.tables.summaries import (
    RECOVERY_FOOTNOTE,
    SUMMARY_FIELDS,
    by_turn_text,
    peak_ood,
    read_summaries,
    recovery,
    wide_by_split,
)
from sftrl.tables.training import (
    RL_RECOVERY_MARKDOWN,
    RL_SWEEP_FOOTNOTE,
    RL_SWEEP_MARKDOWN,
    STAGE_DESCRIPTIONS,
    STAGES,
    STAGES_MARKDOWN,
    TRAJECTORY_FOOTNOTE,
    TRAJECTORY_MARKDOWN,
    read_metrics,
    rl_recovery,
    rl_sweep,
    sft_trajectory,
    stage_table,
    training_summary,
)

# How each result table is shown (its Markdown file and its report page): view and footnote.
VIEWS = {
    "findings": (FINDINGS_MARKDOWN, FINDINGS_FOOTNOTE),
    "sft-trajectory": (TRAJECTORY_MARKDOWN, TRAJECTORY_FOOTNOTE),
    "rl-recovery": (RL_RECOVERY_MARKDOWN, RECOVERY_FOOTNOTE),
    "stages": (STAGES_MARKDOWN, RECOVERY_FOOTNOTE),
    "spectrum": (SPECTRUM_MARKDOWN, None),
    "uv-merge": (UV_MERGE_MARKDOWN, RECOVERY_FOOTNOTE),
    "layer-reset": (LAYER_RESET_MARKDOWN, RECOVERY_FOOTNOTE),
    "rl-sweep": (RL_SWEEP_MARKDOWN, RL_SWEEP_FOOTNOTE),
    "benchmarks": (BENCHMARK_MARKDOWN, BENCHMARK_FOOTNOTE),
}


def table_view(name: str, df) -> tuple[dict, str | None]:
    """(view, footnote) of result table ``name`` as ``df`` holds it: :data:`VIEWS`' own, or, for a
    table combined from several seeds, its across-seed view (:func:`seeds_view`) and footnote."""
    from sftrl.study import SEEDED_RESULT

    view, footnote = VIEWS[name]
    if not is_combined(df):
        return view, footnote
    measures = SEEDED_RESULT[name].measures if name in SEEDED_RESULT else ()
    return seeds_view(view, df, measures), f"{footnote} {SEEDS_FOOTNOTE}" if footnote else SEEDS_FOOTNOTE


__all__ = [
    "BENCHMARK_FOOTNOTE",
    "FINDINGS_FOOTNOTE",
    "FINDINGS_MARKDOWN",
    "BENCHMARK_MARKDOWN",
    "benchmark_table",
    "LAYER_RESET_MARKDOWN",
    "RECOVERY_FOOTNOTE",
    "RL_RECOVERY_MARKDOWN",
    "RL_SWEEP_FOOTNOTE",
    "RL_SWEEP_MARKDOWN",
    "SPECTRUM_MARKDOWN",
    "SEEDS_FOOTNOTE",
    "STAGES",
    "STAGES_MARKDOWN",
    "STAGE_DESCRIPTIONS",
    "SUMMARY_FIELDS",
    "TRAJECTORY_FOOTNOTE",
    "TRAJECTORY_MARKDOWN",
    "UV_MERGE_MARKDOWN",
    "VIEWS",
    "by_turn_text",
    "combine_seeds",
    "is_combined",
    "read_seed_tables",
    "seeds_view",
    "t_interval",
    "table_view",
    "cells",
    "edit_tables",
    "findings",
    "pair_sort_key",
    "peak_ood",
    "read_metrics",
    "read_summaries",
    "read_table",
    "recovery",
    "report_page",
    "rl_recovery",
    "rl_sweep",
    "sft_trajectory",
    "spectrum_profile",
    "spectrum_summary",
    "split_pair",
    "stage_table",
    "to_markdown",
    "training_summary",
    "wide_by_split",
    "write_csv",
    "write_table",
]
