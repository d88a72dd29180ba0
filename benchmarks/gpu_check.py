"""The paper path rehearsed on one GPU: does it run, how fast, in how much memory -- in under 10 minutes.

    python benchmarks/gpu_check.py                                  # on a GPU node
    srun --gpus=1 --mem=120G -t 15 python benchmarks/gpu_check.py   # the same through SLURM
    python benchmarks/gpu_check.py --model-config llama-3.2-11b-text --skip-rehearsal --json results/gpu-check/l.json
    python benchmarks/gpu_check.py                                  # no GPU: one step of each on the CPU (CI)
    python benchmarks/gpu_check.py --scale tiny                     # the paper-shape code path, scaled down

On a machine with CUDA it does two things, one after the other:

1. **The rehearsal on CUDA in bf16** (``--skip-rehearsal`` skips it): builds the rehearsal chat model
   if ``results/rehearsal-model`` is missing (``sftrl chat-model``), then runs the workflow's
   rehearsal study, ``snakemake --configfile config/rehearsal.yaml --config study=rehearsal-cuda
   --cores N --workflow-profile none`` (``model.dtype: auto``: bf16 weights for evaluation and the
   spectra, float32 weights with bf16 compute for training, on a GPU that supports bf16), from
   scratch (``results/rehearsal-cuda/``, this check's own study, is removed first), under
   ``--rehearsal-timeout`` seconds, then writes its report, ``results/rehearsal-cuda/report.html``.
   Its row gives the wall time and whether it succeeded; Snakemake's output is in
   ``results/gpu-check/rehearsal-cuda-snakemake.log``.
2. **Throughput and peak memory at the paper's shapes**: a randomly initialised model with a paper
   model's configuration (``--model-config qwen2.5-7b``: Qwen2ForCausalLM, 7.6B parameters;
   ``llama-3.2-11b-text``: the text model of Llama-3.2-11B-Vision as a plain LlamaForCausalLM of 40
   self-attention layers -- its 8 cross-attention layers are left out, a layer of self-attention
   standing for each, which has about the same parameters), built in bf16 directly on the GPU, no
   weights downloaded. The tokenizer is the rehearsal model's BPE tokenizer; the model's
   vocabulary is the paper model's. Ids the tokenizer does not know are decoded as ``id mod
   len(tokenizer)`` (``--no-fold-ids``: skipped, as the tokenizer does by itself), so the feedback
   turns of a multi-turn episode carry contexts as long as a real tokenizer's would. Three
   measurements, each through the project's own code, with the study's settings from
   ``config/paper-<model>.yaml`` except for the sizes:

   * ``sft step`` -- ``sftrl.sft.train_segment`` (TRL's SFTTrainer: full-parameter, AdamW, bf16,
     gradient checkpointing on a GPU) on the study's paper-template examples through the chat
     template (~290 tokens each), per-device batch ``--sft-batch`` (16, the paper config's), one
     process (the paper config shards over 4 GPUs with ZeRO-3). ``--sft-steps`` steps are run (the
     first warms up); the figures are the last step's. Checkpoints are not written (a 7B model's
     training state is ~90 GB): the trainer's checkpoint and the final save are switched off.
   * ``ppo update`` -- ``sftrl.ppo.train_ppo`` for one update: ``--ppo-episodes`` episodes (8) of up
     to 5 turns, ``--ppo-max-new-tokens`` (256) per response, the paper template, ``ppo_epochs`` of
     the config, one minibatch per epoch in micro-batches of ``--ppo-micro-batch`` (2; the paper
     config's is 4, with ZeRO-2 keeping the optimiser on the CPU). Its two phases, timed by
     wrapping ``sftrl.ppo.play`` and ``sftrl.ppo.score``: ``ppo rollout`` (generation of every turn
     and the scoring of old log-probs and values) and ``ppo optimisation`` (GAE, the epochs of
     forward/backward/Adam steps, metrics). Weights stay in the model's dtype (bf16 here, as
     ``train_ppo`` runs with the paper config's ``model.dtype: bfloat16``).
   * ``eval batch`` -- ``sftrl.evaluate.evaluate_model`` on ``--eval-hands`` (64) OOD hands, 5 turns,
     ``max_new_tokens`` 256, decoding ``model`` (the model's own sampling settings: Qwen2.5-Instruct's).

   The three functions get the model in memory: ``sftrl.models.load_model``/``load_tokenizer`` are
   replaced by functions that return it for the duration of a call, and the final saves by no-ops.

Without CUDA it says so on one line and runs the same three measurements (the same functions) on
the rehearsal chat model (``results/rehearsal-model``, else one built in a temporary directory) on
the CPU, fp32, with small sizes; it does not run the rehearsal (CI runs it separately).
``--scale tiny`` runs the paper-shape path instead, with the model family scaled down to 2 layers of
hidden size 256 (the real vocabulary), on either device: the GPU code path at CPU cost.

The figures (a Markdown table on stdout; ``--json PATH`` writes them as JSON too):

* ``batch``: what one measurement processes (sequences x steps, episodes and actions, hands x turns).
* ``tokens``: ``sft step``: tokens of the timed step's batch, padding included (the trainer's
  ``num_input_tokens_seen``); ``ppo update``/``ppo rollout``/``eval batch``: tokens generated (rows x
  new tokens of every ``generate`` call, padding after an EOS included; a random model never stops
  early, so these are the worst case); ``ppo optimisation``: tokens of every forward/backward
  (context + response, padded) over all epochs.
* ``wall s``: seconds of the measurement (device synchronised): one optimiser step; one PPO update
  (``time/update_seconds`` of its metrics) and its phases; the whole evaluation call.
* ``tokens/s``: tokens / wall s.
* ``peak memory``: on a GPU ``torch.cuda.max_memory_allocated``, reset before each measurement
  (and between the PPO phases); on the CPU the process's peak resident set size (``VmHWM`` of
  /proc/self/status, reset through /proc/self/clear_refs; where that is not possible,
  ``ru_maxrss``, the peak of the process's life). Both include the model's weights.

Time: ``--time-limit`` (570 s) bounds the whole run: the rehearsal's timeouts are capped by what is
left of it, and a measurement still running when it is reached is stopped (and the rest not run).
For scale: the rehearsal took 100 s on a 2-core CPU (its jobs are mostly start-up); ``--skip-rehearsal``
leaves all the time to the measurements.

Nothing is written outside ``results/`` and a temporary directory, except Snakemake's own
``.snakemake/`` bookkeeping and the ``--json`` path. Exit status: 0 when every measurement (and
the rehearsal, when run) succeeded, 1 otherwise; the table is printed either way.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
REHEARSAL_MODEL = ROOT / "results" / "rehearsal-model"
TEMPLATE = "paper"
GIB = 2**30

# The paper models' shapes (their config.json), for a randomly initialised model: (class, config, study config).
PAPER_SHAPES = {
    "qwen2.5-7b": (
        "Qwen2ForCausalLM",
        dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        "config/paper-qwen2.5-7b.yaml",
    ),
    # Llama-3.2-11B-Vision's text model without its 8 cross-attention layers: 40 self-attention layers.
    "llama-3.2-11b-text": (
        "LlamaForCausalLM",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=40,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=131072,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500_000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        "config/paper-llama-3.2-11b.yaml",
    ),
}
TINY_SCALE = dict(num_hidden_layers=2, hidden_size=256, num_attention_heads=4)


@dataclass
class Sizes:
    """How much each measurement does."""

    sft_batch: int
    sft_steps: int
    ppo_episodes: int
    ppo_turns: int
    ppo_max_new_tokens: int
    ppo_micro_batch: int
    ppo_epochs: int | None  # None: the study config's
    eval_hands: int
    eval_turns: int
    eval_max_new_tokens: int


GPU_SIZES = Sizes(16, 2, 8, 5, 256, 2, None, 64, 5, 256)
CPU_SIZES = Sizes(4, 2, 2, 5, 16, 2, None, 8, 5, 32)


@dataclass
class Row:
    measurement: str
    model: str
    device: str
    batch: str
    tokens: int | None = None
    seconds: float | None = None
    peak_bytes: int | None = None
    ok: bool = True
    error: str | None = None

    @property
    def tokens_per_s(self) -> float | None:
        if self.tokens is None or not self.seconds:
            return None
        return self.tokens / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


# --------------------------------------------------------------------------------------------
# Device, memory, patching
# --------------------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory of one measurement: CUDA's allocator on a GPU, the peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.kind = "torch.cuda.max_memory_allocated, reset before each measurement"
        elif self._clear_refs() and self._vm_hwm() is not None:
            self.kind = "peak RSS of this process (VmHWM, reset before each measurement), weights included"
            self.hwm = True
        else:
            self.kind = "peak RSS of this process over its life (ru_maxrss), weights included"
            self.hwm = False

    @staticmethod
    def _clear_refs() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset the peak RSS (Linux >= 4.0)
            return True
        except OSError:
            return False

    @staticmethod
    def _vm_hwm() -> int | None:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return None

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset(self) -> None:
        self.sync()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif self.hwm:
            self._clear_refs()

    def peak(self) -> int:
        self.sync()
        if self.cuda:
            return torch.cuda.max_memory_allocated()
        if self.hwm:
            return self._vm_hwm() or 0
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


_MISSING = object()


@contextlib.contextmanager
def patched(*changes: tuple[object, str, object]):
    """Set ``obj.name = value`` for each change for the duration of the block, then restore."""
    saved = []
    for obj, name, value in changes:
        own = vars(obj).get(name, _MISSING) if hasattr(obj, "__dict__") else getattr(obj, name)
        saved.append((obj, name, own))
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, own in reversed(saved):
            if own is _MISSING:
                delattr(obj, name)
            else:
                setattr(obj, name, own)


def in_memory(model, tokenizer):
    """``sftrl.models.load_model``/``load_tokenizer`` return ``model``/``tokenizer`` and the final
    saves do nothing: the project's training and evaluation functions run on a model in memory."""
    import sftrl.models
    import sftrl.sft

    def no_save(model, tokenizer, out_dir, state_dict=None):
        return Path(out_dir)

    return patched(
        (sftrl.models, "load_model", lambda *a, **k: model),
        (sftrl.models, "load_tokenizer", lambda *a, **k: tokenizer),
        (sftrl.models, "save_model", no_save),
        (sftrl.sft, "save_model", no_save),
    )


class GenerateCounter:
    """Counts the tokens ``model.generate`` produces (rows x new positions per call)."""

    def __init__(self):
        self.tokens = 0

    def wrap(self, model):
        original = model.generate

        def generate(*args, **kwargs):
            out = original(*args, **kwargs)
            prompt = kwargs.get("input_ids", args[0] if args else None)
            ids = getattr(out, "sequences", out)  # a dict output when a turn continues a cache
            self.tokens += ids.shape[0] * (ids.shape[1] - prompt.shape[1])
            return out

        return (model, "generate", generate)


def release(device: torch.device) -> None:
    """Free what a measurement left (optimiser states, caches) and forget accelerate's state, so
    the next measurement starts as a fresh process would (the trainer's mixed precision is not
    inherited by PPO)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def undo_trainer(model) -> None:
    """What the trainer changed on the model besides its weights: gradient checkpointing, the
    autocast wrapper accelerate puts on ``forward`` under mixed precision, ``use_cache``, grads."""
    if hasattr(model, "activation_checkpointing_disable"):  # transformers >= 5 (the old names warn)
        if model.is_activation_checkpointing:
            model.activation_checkpointing_disable()
    elif getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_disable()
    vars(model).pop("forward", None)
    vars(model).pop("_original_forward", None)
    model.config.use_cache = True
    model.zero_grad(set_to_none=True)


def study_config(path: str) -> dict:
    with open(ROOT / path) as fh:
        return yaml.safe_load(fh)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def paper_shape_config(name: str, scale: str) -> tuple[str, dict]:
    """The model class and config values of ``name`` at ``scale`` (full, or tiny: 2 layers of 256,
    the same vocabulary, head ratio and MLP ratio)."""
    cls, values, _ = PAPER_SHAPES[name]
    values = dict(values)
    if scale == "tiny":
        group = values["num_attention_heads"] // values["num_key_value_heads"]
        ratio = values["intermediate_size"] / values["hidden_size"]
        values.update(TINY_SCALE)
        values["num_key_value_heads"] = max(1, values["num_attention_heads"] // group)
        values["intermediate_size"] = int(round(values["hidden_size"] * ratio / 64)) * 64
    return cls, values


def build_paper_shape(name: str, scale: str, tokenizer, device: torch.device, dtype: torch.dtype):
    """A randomly initialised model of a paper model's shapes, created on ``device`` in ``dtype``
    (no CPU initialisation of 7B parameters), sampling like Qwen2.5-Instruct (as the rehearsal
    model does: ``decoding: model``) and stopping at the tokenizer's EOS."""
    import transformers

    cls_name, values = paper_shape_config(name, scale)
    config = getattr(transformers, cls_name).config_class(
        **values, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id
    )
    torch.manual_seed(0)
    with torch.device(device):  # parameters created (and initialised) on the device, in dtype
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    if type(model).__name__ != cls_name:
        raise RuntimeError(f"built a {type(model).__name__}, expected {cls_name}")
    gc_ = model.generation_config
    gc_.pad_token_id, gc_.eos_token_id, gc_.bos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id, None
    gc_.do_sample, gc_.temperature, gc_.top_p, gc_.top_k, gc_.repetition_penalty = True, 0.7, 0.8, 20, 1.05
    return model


def fold_unknown_ids(tokenizer):
    """The patch that decodes ids past the tokenizer's vocabulary as ``id mod len(tokenizer)``
    (the tokenizer would drop them, and a feedback turn would quote an almost empty answer)."""
    n = len(tokenizer)
    original = tokenizer.batch_decode

    def batch_decode(sequences, *args, **kwargs):
        if isinstance(sequences, torch.Tensor):
            sequences = sequences % n
        else:
            sequences = [[int(i) % n for i in seq] for seq in sequences]
        return original(sequences, *args, **kwargs)

    return (tokenizer, "batch_decode", batch_decode)


def rehearsal_model(tmp: Path, build_into_results: bool) -> Path:
    """``results/rehearsal-model``; built there (GPU runs) or in ``tmp`` (CPU runs) when missing."""
    if (REHEARSAL_MODEL / "config.json").is_file():
        return REHEARSAL_MODEL
    from sftrl.chatmodel import build_chat_model

    out = REHEARSAL_MODEL if build_into_results else tmp / "rehearsal-model"
    print(f"building the rehearsal chat model in {out} (sftrl chat-model)", flush=True)
    return build_chat_model(out)


# --------------------------------------------------------------------------------------------
# The three measurements (the same functions on a GPU and on the CPU)
# --------------------------------------------------------------------------------------------


def measure_sft_step(model, tokenizer, sizes: Sizes, mem: PeakMemory, study: dict, tmp: Path) -> dict:
    """``sftrl.sft.train_segment`` for ``sizes.sft_steps`` steps of ``sizes.sft_batch`` examples
    (the study's paper-template examples through the chat template, one process, no
    accumulation); the last step's seconds and tokens, and the peak memory of the whole run."""
    import trl
    from transformers import TrainerCallback

    from sftrl import data
    from sftrl.prompts import get_template
    from sftrl.sft import TrainSettings, train_segment

    steps, batch = sizes.sft_steps, sizes.sft_batch
    timings: list[tuple[float, int]] = []  # (seconds, input tokens seen) at the end of each step

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            mem.sync()
            self.tic = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            mem.sync()
            timings.append((time.perf_counter() - self.tic, int(state.num_input_tokens_seen)))

    class TimedSFTTrainer(trl.SFTTrainer):
        """The project's trainer with the step timer, token counting, and no checkpoint writes."""

        def __init__(self, *args, callbacks=None, **kwargs):
            kwargs["args"].include_num_input_tokens_seen = "all"
            super().__init__(*args, callbacks=[*(callbacks or []), StepTimer()], **kwargs)

        def _save_checkpoint(self, *args, **kwargs):
            return None

    hp = TrainSettings.from_config(
        {**study["sft"], "max_steps": steps, "batch_size": batch, "per_device_batch_size": batch, "save_every": 0}
    )
    examples = data.make_sft(batch * steps, 0, TEMPLATE, answer="random")
    mem.reset()
    with patched((trl, "SFTTrainer", TimedSFTTrainer)), in_memory(model, tokenizer):
        train_segment(
            model, tokenizer, examples, hp, stop_at=steps, model_out=tmp / "sft-model", work_dir=tmp / "sft-work",
            chat=get_template(TEMPLATE).chat,
        )  # fmt: skip
    peak = mem.peak()
    undo_trainer(model)
    if len(timings) != steps:
        raise RuntimeError(f"timed {len(timings)} SFT steps, expected {steps}")
    seconds, seen = timings[-1]
    tokens = seen - (timings[-2][1] if steps > 1 else 0)
    return {
        "batch": f"{batch} seq x 1 step (of {steps})",
        "tokens": tokens,
        "seconds": seconds,
        "peak_bytes": peak,
        "first_step_seconds": timings[0][0],
    }


def measure_ppo_update(model, tokenizer, sizes: Sizes, mem: PeakMemory, study: dict, tmp: Path, dtype: str) -> dict:
    """``sftrl.ppo.train_ppo`` for one update of ``sizes.ppo_episodes`` episodes, the study's PPO
    settings otherwise; the update's seconds (its metrics' ``time/update_seconds``) split into the
    rollout (``play`` + ``score``) and the optimisation, with tokens and peak memory of each."""
    import sftrl.ppo as ppo
    from sftrl import data

    micro = sizes.ppo_micro_batch
    actions = sizes.ppo_episodes * sizes.ppo_turns
    rl = {k: v for k, v in study["rl"].items() if k not in ("algorithm", "from", "num_generations")}
    rl.update(
        turns=sizes.ppo_turns,
        max_new_tokens=sizes.ppo_max_new_tokens,
        num_updates=1,
        episodes_per_update=sizes.ppo_episodes,
        rollout_batch_size=sizes.ppo_episodes,
        micro_batch_size=micro,
        minibatch_size=math.ceil(actions / micro) * micro,  # one minibatch per epoch
        save_every=0,
    )
    if sizes.ppo_epochs is not None:
        rl["ppo_epochs"] = sizes.ppo_epochs
    cfg = ppo.PPOConfig.from_dict(rl)
    hands = data.make_rl(max(64, sizes.ppo_episodes), 0, TEMPLATE)

    phase = {"rollout_s": 0.0, "in_score": False, "trained_tokens": 0, "rollout_peak": 0}
    counter = GenerateCounter()
    play, score, collate = ppo.play, ppo.score, ppo.collate

    def timed_play(*args, **kwargs):
        tic = time.perf_counter()
        out = play(*args, **kwargs)
        mem.sync()
        phase["rollout_s"] += time.perf_counter() - tic
        return out

    def timed_score(*args, **kwargs):
        tic = time.perf_counter()
        phase["in_score"] = True
        try:
            out = score(*args, **kwargs)
        finally:
            phase["in_score"] = False
        mem.sync()
        phase["rollout_s"] += time.perf_counter() - tic
        phase["rollout_peak"] = max(phase["rollout_peak"], mem.peak())
        mem.reset()  # the optimisation's peak from here
        return out

    def counted_collate(pairs, pad_id):
        batch = collate(pairs, pad_id)
        if not phase["in_score"]:
            phase["trained_tokens"] += batch["input_ids"].numel()
        return batch

    mem.reset()
    changes = [(ppo, "play", timed_play), (ppo, "score", timed_score), (ppo, "collate", counted_collate)]
    with patched(*changes, counter.wrap(model)), in_memory(model, tokenizer):
        row = ppo.train_ppo(
            "in-memory", hands, TEMPLATE, cfg, tmp / "ppo-model", tmp / "ppo-work", tmp / "ppo-metrics.jsonl",
            dtype=dtype, progress=False,
        )  # fmt: skip
    opt_peak = mem.peak()
    model.zero_grad(set_to_none=True)
    total = row["time/update_seconds"]
    n_actions = round(row["charts/mean_turns"] * row["charts/episodes"])
    return {
        "batch": f"{row['charts/episodes']} ep, {n_actions} actions, ppo_epochs {row['losses/epochs']}, micro {micro}",
        "tokens": counter.tokens,
        "seconds": total,
        "peak_bytes": max(phase["rollout_peak"], opt_peak),
        "rollout": {"tokens": counter.tokens, "seconds": phase["rollout_s"], "peak_bytes": phase["rollout_peak"]},
        "optimisation": {
            "tokens": phase["trained_tokens"],
            "seconds": total - phase["rollout_s"],
            "peak_bytes": opt_peak,
        },
        "mean_turns": row["charts/mean_turns"],
    }


def measure_eval_batch(model, tokenizer, sizes: Sizes, mem: PeakMemory, study: dict, dtype: str) -> dict:
    """``sftrl.evaluate.evaluate_model`` on ``sizes.eval_hands`` OOD hands in one batch, up to
    ``sizes.eval_turns`` turns, decoding ``model`` (the model's own sampling settings)."""
    from sftrl import data
    from sftrl.evaluate import GenerationSettings, evaluate_model

    ev = study["eval"]
    hands = data.make_eval("ood", sizes.eval_hands, ev["seed"], TEMPLATE)
    settings = GenerationSettings(
        max_new_tokens=sizes.eval_max_new_tokens, batch_size=sizes.eval_hands, decoding="model", seed=ev["seed"]
    )
    counter = GenerateCounter()
    mem.reset()
    tic = time.perf_counter()
    with patched(counter.wrap(model)), in_memory(model, tokenizer):
        results = evaluate_model(
            "in-memory", {"ood": hands}, TEMPLATE, sizes.eval_turns, settings, ev["arithmetic"], dtype, progress=False
        )
    mem.sync()
    seconds = time.perf_counter() - tic
    _, summary = results["ood"]
    return {
        "batch": f"{sizes.eval_hands} hands x {sizes.eval_turns} turns (mean {summary['mean_turns']:.1f})",
        "tokens": counter.tokens,
        "seconds": seconds,
        "peak_bytes": mem.peak(),
    }


class TimeLimit(Exception):
    """The run reached --time-limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise TimeLimit in the block once ``seconds`` have passed (SIGALRM; the main thread only)."""

    def fire(signum, frame):
        raise TimeLimit("stopped at --time-limit")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_measurements(
    model, tokenizer, label: str, device_label: str, sizes, mem, study, dtype, device, deadline: float
) -> list[Row]:
    """The three measurements in turn; a failure (an OOM, say) is recorded and the next one runs.
    At ``deadline`` (``time.perf_counter``) the running measurement is stopped, the rest not run."""
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        steps: list[tuple[str, Callable[[], dict]]] = [
            ("sft step", lambda: measure_sft_step(model, tokenizer, sizes, mem, study, tmp)),
            ("ppo update", lambda: measure_ppo_update(model, tokenizer, sizes, mem, study, tmp, dtype)),
            ("eval batch", lambda: measure_eval_batch(model, tokenizer, sizes, mem, study, dtype)),
        ]
        for name, measure in steps:
            left = deadline - time.perf_counter()
            if left <= 0:
                rows.append(Row(name, label, device_label, "-", ok=False, error="not run: --time-limit reached"))
                continue
            print(f"--- {name}", flush=True)
            try:
                with time_limit(left):
                    r = measure()
            except Exception as err:  # noqa: BLE001 -- reported in the table, the next measurement runs
                traceback.print_exc()
                rows.append(Row(name, label, device_label, "-", ok=False, error=f"{type(err).__name__}: {err}"[:300]))
                undo_trainer(model)
            else:
                rows.append(Row(name, label, device_label, r["batch"], r["tokens"], r["seconds"], r["peak_bytes"]))
                for phase in ("rollout", "optimisation"):
                    if phase in r:
                        p = r[phase]
                        rows.append(Row(f"ppo {phase}", label, device_label, r["batch"], p["tokens"], p["seconds"],
                                        p["peak_bytes"]))  # fmt: skip
            release(device)
    return rows


# --------------------------------------------------------------------------------------------
# The rehearsal (GPU only)
# --------------------------------------------------------------------------------------------


def _stop(proc: subprocess.Popen) -> None:
    """End Snakemake and its jobs (its own process group), politely first."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _snakemake(args: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run Snakemake in the repository with ``args``; (exit status or None on timeout, seconds)."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    tic = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:
            _stop(proc)
            raise
    return rc, time.perf_counter() - tic


def run_rehearsal(study: str, cores: int, timeout: float, report_timeout: float) -> dict:
    """The workflow's rehearsal study on this machine's GPU, from scratch, then its report."""
    import shutil

    from sftrl.config import results_dir

    out = results_dir(study, ROOT)  # refuses a name that is not a plain directory under results/
    log_dir = ROOT / "results" / "gpu-check"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{study}-snakemake.log"
    log.unlink(missing_ok=True)
    tic = time.perf_counter()
    rehearsal_model(Path(tempfile.gettempdir()), build_into_results=True)
    build_s = time.perf_counter() - tic
    shutil.rmtree(out, ignore_errors=True)  # this check's own study: timed from scratch
    common = ["--configfile", "config/rehearsal.yaml", "--workflow-profile", "none", "--config", f"study={study}"]
    print(f"--- rehearsal: snakemake study {study}, --cores {cores}, timeout {timeout:.0f} s; log {log}", flush=True)
    rc, seconds = _snakemake(["--cores", str(cores), *common], log, timeout)
    result = {
        "study": study,
        "log": str(log.relative_to(ROOT)),
        "seconds": seconds,
        "model_build_seconds": build_s,
        "ok": rc == 0,
        "status": "succeeded" if rc == 0 else ("timed out" if rc is None else f"failed (exit {rc})"),
        "report": None,
    }
    if rc == 0:
        report = out / "report.html"
        rc_report, report_s = _snakemake(["--cores", "1", *common, "--report", str(report.relative_to(ROOT))],
                                         log, report_timeout)  # fmt: skip
        result["report_seconds"] = report_s
        if rc_report == 0 and report.is_file():
            result["report"] = str(report.relative_to(ROOT))
        else:
            result["status"] += "; the report failed (see the log)"
    else:
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(["rehearsal log, last lines:", *tail]), file=sys.stderr)
    return result


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def table(rows: list[Row]) -> str:
    head = ["measurement", "model", "device/dtype", "batch", "tokens", "wall s", "tokens/s", "peak memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * 4) + "|"]
    for r in rows:
        peak = "-" if r.peak_bytes is None else f"{r.peak_bytes / GIB:.2f} GiB"
        cells = [r.measurement, r.model, r.device, r.batch if r.ok else f"FAILED: {r.error}",
                 _num(r.tokens, ","), _num(r.seconds, ".2f"), _num(r.tokens_per_s, ",.0f"), peak]  # fmt: skip
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model-config",
        choices=sorted(PAPER_SHAPES),
        default="qwen2.5-7b",
        help="the paper model whose shapes are measured (default qwen2.5-7b)",
    )
    ap.add_argument(
        "--scale",
        choices=["full", "tiny"],
        help="full: the paper model's shapes (default on a GPU); tiny: 2 layers of 256, the real "
        "vocabulary. Without a GPU and without --scale: the rehearsal chat model",
    )
    ap.add_argument("--skip-rehearsal", action="store_true", help="do not run the Snakemake rehearsal (GPU only)")
    ap.add_argument("--rehearsal-study", default="rehearsal-cuda", help="its study name (results/<name>/, rebuilt)")
    ap.add_argument("--rehearsal-timeout", type=float, default=300, help="seconds (default 300)")
    ap.add_argument("--report-timeout", type=float, default=90, help="seconds for its report (default 90)")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)), help="Snakemake's --cores")
    ap.add_argument(
        "--no-fold-ids",
        action="store_true",
        help="skip ids the tokenizer does not know when decoding (default: id mod its vocabulary)",
    )
    ap.add_argument(
        "--time-limit",
        type=float,
        default=570,
        help="seconds for the whole run (default 570): the rehearsal's timeouts are capped by what is left, and "
        "a measurement still running then is stopped and reported as failed, the rest not run",
    )
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    ap.add_argument("--json", help="also write the figures as JSON to this path")
    sizes = ap.add_argument_group("sizes (defaults: GPU / CPU)")
    for f in fields(Sizes):
        gpu, cpu = getattr(GPU_SIZES, f.name), getattr(CPU_SIZES, f.name)
        what = "the study config's" if gpu is None else f"{gpu} / {cpu}"
        sizes.add_argument("--" + f.name.replace("_", "-"), type=int, help=f"default {what}")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    scale = args.scale or ("full" if cuda else None)
    if cuda:
        print(f"GPU: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / GIB:.0f} GiB)")
    else:
        what = "the rehearsal chat model" if scale is None else f"the {args.model_config} shapes at {scale} scale"
        print(f"No GPU (torch.cuda.is_available() is False): running one step of each (SFT step, PPO update, "
              f"5-turn eval batch) on {what} on the CPU instead, fp32, small sizes; no rehearsal.",
              flush=True)  # fmt: skip
        if scale == "full":
            print("--scale full needs a GPU (a 7B model in fp32 with AdamW does not fit a CPU run); "
                  "use --scale tiny", file=sys.stderr)  # fmt: skip
            return 2
    base = GPU_SIZES if cuda and scale == "full" else CPU_SIZES
    sizes = Sizes(**{f.name: getattr(args, f.name) or getattr(base, f.name) for f in fields(Sizes)})
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32
    dtype_name = {torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    device_label = f"{device.type} {'bf16' if dtype == torch.bfloat16 else 'fp32'}"

    result: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
    rows: list[Row] = []
    if cuda and not args.skip_rehearsal:
        left = started + args.time_limit - time.perf_counter()
        reh = run_rehearsal(
            args.rehearsal_study, args.cores, min(args.rehearsal_timeout, left), min(args.report_timeout, left)
        )
        result["rehearsal"] = reh
        rows.append(Row(f"rehearsal ({reh['status']})", "rehearsal chat model", device_label,
                        f"snakemake study {reh['study']}", seconds=reh["seconds"], ok=reh["ok"],
                        error=None if reh["ok"] else reh["status"]))  # fmt: skip
        release(device)

    from sftrl.models import count_parameters, load_model, load_tokenizer

    with tempfile.TemporaryDirectory(prefix="gpu-check-model-") as tmp:
        model_dir = rehearsal_model(Path(tmp), build_into_results=cuda)
        tokenizer = load_tokenizer(model_dir)
        tic = time.perf_counter()
        if scale is None:  # the CPU's default: the rehearsal model itself
            model = load_model(model_dir, dtype="float32", device=device)
            family = "rehearsal chat model (Qwen2)"
            changes = []
        else:
            model = build_paper_shape(args.model_config, scale, tokenizer, device, dtype)
            family = args.model_config + (" shapes" if scale == "full" else " family, tiny scale")
            vocab = model.config.vocab_size
            changes = [] if args.no_fold_ids or vocab <= len(tokenizer) else [fold_unknown_ids(tokenizer)]
        if cuda:
            torch.cuda.synchronize()
        build_s = time.perf_counter() - tic
    n = count_parameters(model)
    label = f"{family}, {n / 1e9:.2f}B params" if n >= 1e9 else f"{family}, {n / 1e6:.1f}M params"
    print(f"model: {label}, random weights, {dtype_name}, built in {build_s:.1f} s", flush=True)
    study = study_config(PAPER_SHAPES[args.model_config][2])
    mem = PeakMemory(device)
    with patched(*changes):
        deadline = started + args.time_limit
        rows += run_measurements(model, tokenizer, label, device_label, sizes, mem, study, dtype_name, device, deadline)

    notes = [
        f"peak memory: {mem.kind}",
        f"sft step: sftrl.sft.train_segment (TRL SFTTrainer), the last step of {sizes.sft_steps}"
        + (" (the first warms up)" if sizes.sft_steps > 1 else "")
        + "; tokens are the step's batch, padding included",
        "ppo update: sftrl.ppo.train_ppo, one update; tokens are the generated tokens; rollout = play + score, "
        "optimisation = the rest of the update (tokens: every forward/backward, all epochs)",
        "eval batch: sftrl.evaluate.evaluate_model, decoding model; tokens are the generated tokens",
        f"settings: {PAPER_SHAPES[args.model_config][2]} except the sizes; template {TEMPLATE}",
    ]
    if scale is not None and args.model_config.startswith("llama"):
        notes.append("llama-3.2-11b-text: 40 self-attention layers; the 8 cross-attention layers are left out")
    if changes:
        notes.append("ids past the rehearsal tokenizer's vocabulary are decoded as id mod its size (--no-fold-ids)")
    result.update(
        mode="gpu" if cuda else "cpu",
        model=label,
        model_build_seconds=build_s,
        dtype=dtype_name,
        memory=mem.kind,
        sizes=asdict(sizes),
        rows=[r.as_dict() for r in rows],
        notes=notes,
        total_seconds=time.perf_counter() - started,
    )
    print()
    print(table(rows))
    print()
    for note in notes:
        print(f"* {note}")
    if "rehearsal" in result:
        reh = result["rehearsal"]
        print(f"* rehearsal: {reh['status']} in {reh['seconds']:.1f} s; report: {reh['report'] or '-'}; "
              f"log: {reh['log']}")  # fmt: skip
    print(f"* total: {result['total_seconds']:.1f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"* figures written to {args.json}")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
