"""GRPO through TRL's ``GRPOTrainer``: the library path, a deviation from the study.

The study ran PPO with a learned critic over multi-turn episodes (``sftrl.ppo``). This module
offers TRL's GRPO instead (``rl.algorithm: grpo``) for users who want a maintained trainer:

* **single attempt**: each completion is one answer to the hand's prompt, scored by the same
  verifier (``check_formula`` on the extracted formula, +5 ... -3); there is no feedback turn and
  ``PPOConfig.turns`` is ignored;
* **no critic**: the advantage of a completion is its reward minus the mean of the
  ``num_generations`` completions of the same prompt, scaled by their standard deviation
  (TRL's defaults), instead of GAE over turns with a value head;
* **token-level loss**: TRL's default loss (``dapo``) clips per-token ratios and averages over
  tokens; the study clipped the ratio of the whole response.

The rest of ``PPOConfig`` maps onto ``GRPOConfig`` (see :func:`grpo_args`): ``episodes_per_update``
completions are generated per update (``generation_batch_size``), reused for ``ppo_epochs`` passes
(``num_iterations``) in optimiser steps of ``minibatch_size`` completions per process, with the
same Adam, cosine schedule to ``lr_min``, gradient clipping, temperature, clip (``epsilon``) and KL
coefficient (``beta``). Resumable state is TRL's checkpoint in ``work_dir`` every ``save_every``
updates; a rerun resumes from the newest one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import polars as pl
import torch
from transformers import TrainerCallback

from sftrl.game import check_formula
from sftrl.logs import truncate_metrics
from sftrl.ppo_config import PPOConfig
from sftrl.prompts import get_template

__all__ = ["grpo_args", "make_reward_function", "train_grpo"]


def make_reward_function(template: str, arithmetic: str = "exact"):
    """TRL reward function ``f(prompts, completions, numbers, **columns) -> list[float]``.

    ``numbers`` is the dataset column of each hand's numbers under the ID rule; a completion is
    plain text or, for chat templates, a list of messages whose last one is the answer. The reward
    is the verifier's for the extracted formula (an answer with no formula is ILLEGAL, -3), exactly
    as one attempt of an evaluation episode is scored.
    """
    tpl = get_template(template)

    def formula_reward(prompts, completions, numbers, **columns) -> list[float]:
        rewards = []
        for completion, hand in zip(completions, numbers, strict=True):
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            formula = tpl.extract(text)
            verdict = check_formula(formula, list(hand), arithmetic=arithmetic)  # None: the study's "None"
            rewards.append(verdict.reward)
        return rewards

    return formula_reward


def _steps_per_update(cfg: PPOConfig, world: int) -> int:
    per_step = cfg.minibatch_size * world
    if cfg.episodes_per_update % per_step:
        raise ValueError(
            f"GRPO: episodes_per_update ({cfg.episodes_per_update}) must be a multiple of minibatch_size "
            f"({cfg.minibatch_size}) x processes ({world})"
        )
    return cfg.episodes_per_update // per_step * cfg.ppo_epochs


def grpo_args(
    cfg: PPOConfig, work_dir: str | os.PathLike, num_generations: int = 8, world: int = 1, report_to: str = "none"
):
    """``GRPOConfig`` for ``cfg`` (see the module docstring for the mapping)."""
    from trl import GRPOConfig

    if cfg.episodes_per_update % num_generations:
        raise ValueError(
            f"GRPO: episodes_per_update ({cfg.episodes_per_update}) must be a multiple of "
            f"num_generations ({num_generations})"
        )
    steps = _steps_per_update(cfg, world)
    on_gpu = torch.cuda.is_available()
    return GRPOConfig(
        output_dir=str(work_dir),
        max_steps=cfg.num_updates * steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.minibatch_size // cfg.micro_batch_size,
        generation_batch_size=cfg.episodes_per_update,
        num_generations=num_generations,
        num_iterations=cfg.ppo_epochs,
        max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=0,
        top_p=1.0,
        epsilon=cfg.clip,
        beta=cfg.kl_coef,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": cfg.lr_min},
        warmup_steps=0,
        adam_epsilon=cfg.adam_eps,
        weight_decay=0.0,
        max_grad_norm=cfg.max_grad_norm,
        seed=cfg.seed,
        # TRL defaults suit big GPUs; on a CPU both would only slow training down.
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=on_gpu,
        use_cpu=not on_gpu,
        save_strategy="steps",
        save_steps=(cfg.save_every or cfg.num_updates) * steps,
        logging_steps=steps,
        report_to=report_to,  # logging.report_to (beside the JSONL)
        run_name=Path(work_dir).name,
        dataloader_num_workers=0,
    )


class _Metrics(TrainerCallback):
    """One JSON line per update, in this project's metric names where TRL has an equivalent."""

    NAMES = {
        "reward": "charts/mean_reward",
        "learning_rate": "charts/learning_rate",
        "kl": "charts/kl_to_reference",
        "clip_ratio/region_mean": "losses/clipfrac",
        "loss": "losses/policy_loss",
    }

    def __init__(self, path: Path, steps_per_update: int):
        self.path, self.steps = path, steps_per_update
        path.parent.mkdir(parents=True, exist_ok=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "reward" not in logs or not state.is_world_process_zero:
            return
        row = {"update": state.global_step // self.steps}
        row |= {self.NAMES.get(k, f"grpo/{k}"): v for k, v in logs.items() if isinstance(v, (int, float))}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def train_grpo(
    model_dir: str | os.PathLike,
    rl_hands: pl.DataFrame,
    template: str,
    cfg: PPOConfig,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    num_generations: int = 8,
    dtype: str = "auto",
    report_to: str = "none",
    logging_dir: str | os.PathLike | None = None,
) -> dict:
    """GRPO from ``model_dir`` on single attempts at ``rl_hands``; the policy goes to ``out_dir``.

    Same contract as :func:`sftrl.ppo.train_ppo`: metrics per update to ``metrics_path``,
    resumable state in ``work_dir`` (removed at the end), the final model saved atomically.
    Returns the trainer's last log entry.
    """
    from datasets import Dataset
    from trl import GRPOTrainer

    from sftrl.models import load_model, load_tokenizer, save_model

    work_dir, metrics_path = Path(work_dir), Path(metrics_path)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = grpo_args(cfg, work_dir, num_generations, world, report_to)
    if report_to == "tensorboard" and logging_dir is not None:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(logging_dir)
    tpl = get_template(template)
    prompts = rl_hands["prompt"].to_list()
    dataset = Dataset.from_dict(
        {
            "prompt": [[{"role": "user", "content": p}] for p in prompts] if tpl.chat else prompts,
            "numbers": rl_hands["numbers"].to_list(),
        }
    )
    tokenizer = load_tokenizer(model_dir)
    newest = max(
        (p for p in work_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()),
        key=lambda p: int(p.name.split("-")[1]),
        default=None,
    )
    steps = _steps_per_update(cfg, world)
    # drop what an interrupted run logged after its newest state (all of it for a fresh run)
    truncate_metrics(metrics_path, int(newest.name.split("-")[1]) // steps if newest else 0)
    reward = make_reward_function(template, cfg.arithmetic)
    trainer = GRPOTrainer(
        model=load_model(model_dir, dtype="float32" if dtype == "auto" else dtype),
        reward_funcs=reward,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[_Metrics(metrics_path, steps)],
    )
    trainer.train(resume_from_checkpoint=str(newest) if newest else None)
    if trainer.accelerator.is_main_process:
        save_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, out_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    return trainer.state.log_history[-1] if trainer.state.log_history else {}
