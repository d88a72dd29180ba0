"""Rule spectrum: singular-value change and singular-direction rotation from model a to b, from
their SVD files (with factors) or their checkpoints (decomposed here)."""

from sftrl.logs import job_log
from sftrl.spectrum import compare, write_spectrum

sm = snakemake  # noqa: F821 (injected by Snakemake)
p = sm.params
with job_log(sm.log[0], sm.threads):
    summary, per_index = compare(sm.input.a, sm.input.b, p.types, k_frac=p.k_frac, band=p.band)
    write_spectrum(summary, per_index, sm.output.summary, index=sm.output.index)
    print(summary)
