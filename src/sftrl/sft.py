"""Supervised fine-tuning with TRL's ``SFTTrainer``, in resumable segments.

The study saves SFT checkpoints along one run at several "strengths" (steps). Here each saved
step is its own Snakemake job -- a *segment* -- that resumes the same run from the previous
step's training state (weights, optimiser, scheduler, RNG and data position) and stops at its own
step. The learning-rate schedule spans ``max_steps`` whatever the checkpoints are, so

* a chain of segments gives exactly the weights of one uninterrupted run (tested), and
* a new checkpoint past the last one only adds its own segment to the DAG.

Inside a segment, resumable state can also be written every ``save_every`` steps into the
segment's work directory; a requeued job (SLURM preemption) resumes from the newest one.

The same function pretrains the tiny base model (one segment from a freshly built model).
Loss is on the completion only (TRL's prompt-completion format).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import polars as pl
import torch

from sftrl.atomic import atomic_path

# TRL, transformers' Trainer and datasets are imported where they are used (train_segment): the
# base rule and benchmarks import this module for TrainSettings and tokenize_completions only,
# and importing them costs a job seconds (benchmarks/study_time.py).


@dataclass
class TrainSettings:
    """Optimisation settings of one run (``sft`` or ``base`` in the config)."""

    max_steps: int  # length of the LR schedule (the run), in optimiser steps
    lr: float
    scheduler: str = "constant"  # constant | linear | cosine
    warmup: float = 0.0  # steps (>= 1) or a fraction of max_steps (< 1), as transformers 5 reads it
    batch_size: int = 64  # global batch
    per_device_batch_size: int = 64
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # resumable state inside a segment every N steps (0: only at its end)
    # Longest tokenised example (prompt + answer); None = the model's max_position_embeddings. A
    # longer example is an error, never silently truncated.
    max_length: int | None = None
    lora: dict | None = field(default=None)  # sft.lora when enabled

    @classmethod
    def from_config(cls, section: dict, max_length: int | None = None) -> TrainSettings:
        """From the ``sft`` or ``base`` section of a study config."""
        warmup = section.get("warmup_ratio", section.get("warmup_steps", 0.0))
        lora = section.get("lora")
        return cls(
            max_steps=section.get("max_steps", section.get("steps")),
            lr=section["lr"],
            scheduler=section["scheduler"],
            warmup=float(warmup),
            batch_size=section["batch_size"],
            per_device_batch_size=section.get("per_device_batch_size", section["batch_size"]),
            weight_decay=section["weight_decay"],
            adam_betas=tuple(section["adam_betas"]),
            max_grad_norm=section.get("max_grad_norm", 1.0),
            seed=section["seed"],
            save_every=section.get("save_every", 0),
            max_length=section.get("max_length", max_length),
            lora=lora if lora and lora.get("enabled") else None,
        )


def _callbacks(stop_at: int, metrics_path: Path | None) -> list:
    """Trainer callbacks: stop (and save resumable state) once the segment's last step is done;
    append loss and learning rate per logged step to a JSON-lines file (``metrics_path``)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= stop_at:
                control.should_training_stop = True
                control.should_save = True
            return control

    class MetricsFile(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs:
                return
            row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    callbacks = [StopAt()]
    if metrics_path is not None:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        callbacks.append(MetricsFile())
    return callbacks


def _dataset(data: pl.DataFrame, tokenizer, chat: bool, max_length: int, key: str = "sft.max_length"):
    """Prompt-completion examples for TRL (loss on the completion only), each at most
    ``max_length`` tokens (a longer one is an error naming ``key``: TRL would truncate it).

    Chat templates are left to TRL (conversational prompt-completion); their rendered lengths are
    checked here. Plain text is tokenised here in one batched call -- TRL's per-example map is
    ~30x slower, which dominates a CPU run -- into the ``input_ids`` and ``labels`` (-100 on the
    prompt) that TRL would build. Returns a ``datasets.Dataset``.
    """
    from datasets import Dataset

    if chat:
        prompts = [[{"role": "user", "content": p}] for p in data["prompt"]]
        completions = [[{"role": "assistant", "content": c}] for c in data["completion"]]
        check_chat_lengths(tokenizer, prompts, completions, max_length, key)
        return Dataset.from_dict({"prompt": prompts, "completion": completions})
    examples = tokenize_completions(data, tokenizer, max_length, key)
    return Dataset.from_dict(
        {"input_ids": [ids for ids, _ in examples], "labels": [[-100] * n + ids[n:] for ids, n in examples]}
    )


def check_chat_lengths(tokenizer, prompts, completions, max_length: int, key: str = "sft.max_length") -> int:
    """The longest example, in tokens, as the chat template renders prompt + answer; ValueError
    naming ``key`` if any is longer than ``max_length``."""
    texts = [tokenizer.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions, strict=True)]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    longest = max(lengths, default=0)
    if longest > max_length:
        over = sum(n > max_length for n in lengths)
        raise ValueError(
            f"{key}: {over} of {len(lengths)} SFT examples are longer than {max_length} tokens (the longest: "
            f"{longest}) and would be truncated; raise {key} (null = the model's max_position_embeddings)"
        )
    print(f"SFT examples: the longest is {longest} tokens (limit {max_length})")
    return longest


def tokenize_completions(
    data: pl.DataFrame, tokenizer, max_length: int | None, key: str = "max_length"
) -> list[tuple[list[int], int]]:
    """``(ids, prompt length)`` per example: the tokens of prompt + completion + EOS (with the
    tokenizer's BOS), in one batched call; ``key`` names the length limit in errors."""
    prompts = data["prompt"].to_list()
    prompt_ids = tokenizer(prompts)["input_ids"]
    texts = [p + c + tokenizer.eos_token for p, c in zip(prompts, data["completion"], strict=True)]
    full_ids = tokenizer(texts)["input_ids"]
    out = []
    for p, f in zip(prompt_ids, full_ids, strict=True):
        if f[: len(p)] != p:
            raise ValueError(f"tokenised prompt is not a prefix of prompt + completion: {p} vs {f}")
        if max_length is not None and len(f) > max_length:
            raise ValueError(
                f"{key}: an example has {len(f)} tokens, more than {max_length}, and would be truncated; raise {key}"
            )
        out.append((f, len(p)))
    return out


def _newest_checkpoint(work_dir: Path) -> Path | None:
    found = [p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def _sft_config(hp: TrainSettings, work_dir: Path, stop_at: int, deepspeed: str | None = None, report_to: str = "none"):
    from trl import SFTConfig

    on_gpu = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    accum = hp.batch_size // (hp.per_device_batch_size * world)
    if accum < 1 or hp.batch_size != accum * hp.per_device_batch_size * world:
        raise ValueError(
            f"batch_size {hp.batch_size} is not per_device_batch_size {hp.per_device_batch_size} "
            f"x processes {world} x an integer number of accumulation steps"
        )
    return SFTConfig(
        output_dir=str(work_dir),
        max_steps=hp.max_steps,
        per_device_train_batch_size=hp.per_device_batch_size,
        gradient_accumulation_steps=accum,
        learning_rate=hp.lr,
        lr_scheduler_type=hp.scheduler,
        warmup_steps=hp.warmup,
        weight_decay=hp.weight_decay,
        adam_beta1=hp.adam_betas[0],
        adam_beta2=hp.adam_betas[1],
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        data_seed=hp.seed,
        max_length=hp.max_length,
        completion_only_loss=True,
        packing=False,
        # TRL defaults suit big GPUs; on a CPU both would only slow training down.
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=on_gpu,
        use_cpu=not on_gpu,
        save_strategy="steps",
        save_steps=hp.save_every or stop_at,
        save_only_model=False,
        logging_steps=max(1, min(10, stop_at // 20)),
        report_to=report_to,  # logging.report_to: none | tensorboard | wandb (beside the JSONL)
        run_name=work_dir.name,
        dataloader_num_workers=0,
        disable_tqdm=False,
        deepspeed=deepspeed,  # a DeepSpeed JSON config (multi-GPU jobs; see sftrl.launch)
    )


def train_segment(
    model,
    tokenizer,
    data: pl.DataFrame,
    hp: TrainSettings,
    stop_at: int,
    model_out: str | os.PathLike,
    work_dir: str | os.PathLike,
    resume_from: str | os.PathLike | None = None,
    state_out: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    chat: bool = False,
    deepspeed: str | os.PathLike | None = None,
    report_to: str = "none",
    logging_dir: str | os.PathLike | None = None,
) -> dict:
    """Train ``model`` on ``data`` (columns ``prompt``, ``completion``) up to step ``stop_at``.

    ``resume_from`` is the previous segment's state (a transformers checkpoint directory); the
    model's weights are taken from it. The newest state in ``work_dir`` wins over it (a requeued
    job). The model is saved to ``model_out`` and, when ``state_out`` is given, the resumable state
    to ``state_out``; both atomically. ``chat`` renders prompt and answer as a user and an
    assistant turn through the tokenizer's chat template (the paper template). ``report_to``
    (``none``, ``tensorboard``, ``wandb``) logs the trainer's metrics there too, TensorBoard's to
    ``logging_dir``. Returns the trainer's final log entry.

    Under a multi-process launch (``sftrl.launch``) every process calls this; the batch is split
    over them, the weights are gathered (DeepSpeed ZeRO-3 shards them) and only the main process
    writes the outputs.
    """
    from trl import SFTTrainer

    from sftrl.models import save_model

    if not 0 < stop_at <= hp.max_steps:
        raise ValueError(f"stop_at must be in 1..max_steps ({hp.max_steps}); got {stop_at}")
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    resume = _newest_checkpoint(work_dir) or (Path(resume_from) if resume_from else None)
    if resume is not None and not (resume / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{resume}: not a training state (no trainer_state.json)")

    if hp.lora:
        from sftrl.models import apply_lora

        model = apply_lora(model, hp.lora)
    if hp.max_length is None:  # the model's own context (TRL would otherwise cut at 1024)
        hp = replace(hp, max_length=int(model.config.max_position_embeddings))
    dataset = _dataset(data, tokenizer, chat, hp.max_length)
    if report_to == "tensorboard" and logging_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)  # transformers 5 reads it here
    callbacks = _callbacks(stop_at, Path(metrics_path) if metrics_path is not None else None)
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(hp, work_dir, stop_at, str(deepspeed) if deepspeed else None, report_to),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    step = trainer.state.global_step
    if step != stop_at:
        raise RuntimeError(f"training stopped at step {step}, expected {stop_at}")

    # Collective on every process (ZeRO-3 gathers the shards); None = the model's own state dict.
    accelerator = trainer.accelerator
    state_dict = accelerator.get_state_dict(trainer.model) if accelerator.num_processes > 1 else None
    if trainer.is_world_process_zero():
        if state_out is not None:
            final = work_dir / f"checkpoint-{stop_at}"
            if not final.is_dir():
                raise RuntimeError(f"no training state was written at step {stop_at} in {work_dir}")
            with atomic_path(state_out, directory=True) as tmp:
                # training_args.bin is a pickle that resuming never reads: the state keeps data only
                shutil.copytree(final, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("training_args.bin"))
        save_model(accelerator.unwrap_model(trainer.model), tokenizer, model_out, state_dict=state_dict)
        shutil.rmtree(work_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return trainer.state.log_history[-1] if trainer.state.log_history else {}
