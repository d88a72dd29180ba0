"""Names shared by the workflow, the heavy modules and the table code, in a module that imports
nothing.

`sftrl.tables` runs in `envs/analysis.yaml`, which has polars but no torch, numpy or
safetensors: it takes these from here, not from `sftrl.spectrum`.
"""

MATRIX_TYPES = ("q", "k", "v", "o", "gate", "up", "down")  # the projections of a decoder layer
BANDS = ("head", "bulk", "tail")  # parts of a spectrum: top band, the rest, bottom band
INTERVAL = ("accuracy", "ci_low", "ci_high")  # an accuracy and its 95% interval, as summaries and tables name them

# Run-only settings: they change how a job runs (memory per step, how often resumable state is
# saved), never what it computes, so they are not params of the rules (changing one reruns
# nothing); the scripts read them from the config. per_device_batch_size keeps the global batch
# (gradient accumulation makes up the rest): the same update, summed in another order.
RUN_ONLY = {
    "sft": ("per_device_batch_size", "save_every"),
    "rl": ("micro_batch_size", "rollout_batch_size", "save_every"),
    "eval": ("batch_size",),
}
