"""Rule svd: singular values (and factors) of every analysed matrix of one model."""

from sftrl.logs import job_log
from sftrl.spectrum import svd_checkpoint

sm = snakemake  # noqa: F821 (injected by Snakemake)
with job_log(sm.log[0], sm.threads):
    svd_checkpoint(sm.input[0], sm.output[0], types=sm.params.types, factors=sm.params.factors)
