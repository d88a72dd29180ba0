"""Rule data_*: write one generated data set (see sftrl.data)."""

from sftrl import data
from sftrl.atomic import write_parquet
from sftrl.logs import job_log

p = snakemake.params  # noqa: F821 (injected by Snakemake)
with job_log(snakemake.log[0]):  # noqa: F821
    heldout = data.heldout_multisets(*p.holdout)
    if p.kind.startswith("eval-"):
        df = data.make_eval(p.kind.removeprefix("eval-"), p.n, p.seed, p.template, heldout)
    elif p.kind == "rl":
        df = data.make_rl(p.n, p.seed, p.template, heldout)
    elif p.kind == "pretrain":
        df = data.make_pretrain(p.n, p.seed, p.template, heldout, p.answer, p.feedback_fraction, p.wrapped_fraction)
    else:
        df = data.make_sft(p.n, p.seed, p.template, heldout, answer=p.answer)
    write_parquet(df, snakemake.output[0])  # noqa: F821
    print(f"{p.kind}: {df.height} rows, {int(df['heldout'].sum())} in the held-out split")
