"""PPO on the 24-point game, as the study ran it (docs/study.md §3, §6).

TRL 1.16 has no PPOTrainer, so this module is the whole algorithm, read top to bottom like
cleanrl's ``ppo.py``: the config, the pure functions (GAE, whitening, losses, KL estimators), the
actor-critic, the rollout, then ``train_ppo`` (rollout -> GAE -> update epochs -> metrics).

The study's PPO (RL4VLM's token-level PPO with a learned critic)
---------------------------------------------------------------
* **Episode** = one hand under the ID rule with up to ``turns`` attempts. Each attempt is scored
  by ``check_formula`` (+5 correct ... -3 illegal); a failed attempt is answered with the
  verifier's feedback turn and the dialogue goes on (``sftrl.evaluate.run_episodes`` plays it).
* **Action** = a whole response. Its log-probability is the sum of its tokens' log-probabilities
  under the sampling distribution ``softmax(logits / temperature)``. The study used
  ``0.5 * logp(thought) + logp(action)`` (``thought_prob_coef``, a legacy of RL4VLM); its prompt
  asks for no chain of thought, so there is no thought part here and the action is the response.
* **Critic** = an MLP value head (hidden -> hidden/4 -> hidden/8 -> 1, ReLU) on the final hidden
  state of the last token of the context, i.e. one value per turn (state = dialogue so far).
* **Returns** = GAE over the turns of an episode (gamma 0.9, lambda 0.95); the value after an
  episode's last attempt is 0. Advantages are standardised per rollout buffer.
* **Update** = ``ppo_epochs`` (4) passes of minibatches: clipped surrogate (clip 0.1) plus
  ``vf_coef`` (0.5) x the clipped value loss (same clip); where an action's ratio exceeds 10 only
  its clipped surrogate is used (the study's guard). Adam (lr 1e-6, eps 1e-7), cosine decay to
  1e-9 over the run, gradient norm clipped to 0.01. No entropy bonus (the study defined a
  coefficient but its loss never used it) and no KL penalty (``kl_coef`` adds one, off by default).

Differences from the study's code (documented, deliberate)
----------------------------------------------------------
* A rollout is ``episodes_per_update`` *whole* episodes. The study collected a fixed number of
  environment steps (128 per process, x 4 processes) and let episodes run across rollouts,
  bootstrapping the value at the buffer's end; whole episodes make the value after the last real
  step exactly 0.
* An episode ends after ``turns`` scored attempts. The study's env scored a sixth, discarded
  generation -1 before truncating (docs/study.md §3); that step is not played here.
* Minibatches are cut from a shuffled buffer and the last one is filled up from the start of the
  shuffled order, so every optimiser step sees ``minibatch_size`` actions (DeepSpeed needs a fixed
  number of micro-batches per step). The study's mini-batch 1 x 128 accumulation steps is
  ``minibatch_size=128``.

Running it
----------
One process (this machine's CPU) is the plain call ``train_ppo(...)``. Several GPUs:
``accelerate launch --num_processes 4 -m ...`` (or a script calling ``train_ppo``); every process
plays its share of the episodes, gradients are averaged by ``accelerator.backward`` and metrics are
summed across processes. The study used DeepSpeed ZeRO-2 (optimizer states and gradients sharded,
weights whole, so ``generate`` runs on each GPU's own copy). With accelerate that is
``accelerate launch --use_deepspeed --deepspeed_config_file ds.json ...`` with a config like::

    {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
     "bf16": {"enabled": true},
     "train_micro_batch_size_per_gpu": <micro_batch_size>,
     "gradient_accumulation_steps": "auto",     # filled from minibatch_size / micro_batch_size
     "gradient_clipping": 0.01}                 # DeepSpeed clips itself (= max_grad_norm)

and no ``optimizer``/``scheduler`` section (this module builds Adam and the cosine schedule).
ZeRO-3 is not supported (``generate`` would need the sharded weights gathered).

Precision: weights are kept in float32 unless ``dtype`` says otherwise, because Adam steps of
lr 1e-6 are below bfloat16's resolution (8 bits of mantissa) and would be rounded away; bf16
compute comes from ``accelerate launch --mixed_precision bf16`` or the DeepSpeed config, which
keep fp32 master weights.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch
from torch import nn
from tqdm.auto import tqdm

from sftrl.game import check_formula
from sftrl.ppo_config import PPOConfig  # the settings, re-exported (a module without torch)
from sftrl.state import load_training_state, save_training_state

__all__ = [
    "ActorCritic",
    "PPOConfig",
    "Rollout",
    "Sampler",
    "clipped_policy_loss",
    "clipped_value_loss",
    "collate",
    "gae",
    "kl_estimate",
    "length_bucketed_order",
    "masked_whiten",
    "play",
    "score",
    "train_ppo",
]


# --------------------------------------------------------------------------------------------
# Pure functions (tested on hand-computed numbers)
# --------------------------------------------------------------------------------------------


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (batch, steps) tensors.

    ``mask`` is 1 on an episode's real steps (a prefix of each row) and 0 after; the value after
    the last real step is 0 (the episode is over). Returns ``(advantages, returns)``, 0 off the mask.

        delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t
        A_t     = delta_t + gamma * lam * m_{t+1} * A_{t+1}          returns_t = A_t + V_t
    """
    mask = mask.to(rewards.dtype)
    batch, steps = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros(batch, dtype=rewards.dtype, device=rewards.device)
    next_value = torch.zeros_like(next_advantage)
    next_mask = torch.zeros_like(next_advantage)
    for t in reversed(range(steps)):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        next_advantage = (delta + gamma * lam * next_mask * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value, next_mask = values[:, t], mask[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the entries where ``mask`` is 1 (unbiased std, as the
    study's ``adv.std()``); 0 elsewhere."""
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + eps) * mask


def kl_estimate(logp: torch.Tensor, logp_ref: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-sample estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1, k2, k3).

    With ``r = logp_ref - logp``: k1 = -r (unbiased), k2 = r^2 / 2 (low variance, biased),
    k3 = (e^r - 1) - r (unbiased, never negative).
    """
    log_ratio = logp_ref - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimate: kind must be k1, k2 or k3, got {kind!r}")


def clipped_policy_loss(
    logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip: float, ratio_guard: float | None = 10.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, to minimise. Returns ``(pg_loss, clipfrac, approx_kl)``.

    Per action: ``-min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A)``; where ``ratio`` exceeds
    ``ratio_guard`` only the clipped term ``-clip(ratio) * A`` is used (the study's guard, per
    action as its mini-batch of 1 made it; ``None`` disables it). ``clipfrac``: fraction of actions
    whose ratio lies outside the clip range; ``approx_kl``: k3 estimate of KL(old || new).
    """
    log_ratio = logp_new - logp_old
    ratio = log_ratio.exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    per_action = -torch.min(unclipped, clipped)
    if ratio_guard is not None:
        per_action = torch.where(ratio > ratio_guard, -clipped, per_action)
    with torch.no_grad():
        clipfrac = ((ratio - 1).abs() > clip).float().mean()
        approx_kl = kl_estimate(logp_old, logp_new, "k3").mean()
    return per_action.mean(), clipfrac, approx_kl


def clipped_value_loss(v_new: torch.Tensor, v_old: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """``0.5 * mean(max((v_new - R)^2, (v_old + clip(v_new - v_old, -clip, clip) - R)^2))``."""
    v_clipped = v_old + (v_new - v_old).clamp(-clip, clip)
    return 0.5 * torch.max((v_new - returns) ** 2, (v_clipped - returns) ** 2).mean()


# --------------------------------------------------------------------------------------------
# Actor-critic
# --------------------------------------------------------------------------------------------


def collate(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch (context ids, response ids) pairs as ``[pad.. context | response ..pad]``.

    Contexts are left-padded to a common length ``C`` and responses right-padded to ``R``, so the
    last context token is at column ``C - 1`` in every row and the response starts at ``C``.
    """
    c_len = max(len(c) for c, _ in pairs)
    r_len = max(len(r) for _, r in pairs)
    batch = len(pairs)
    input_ids = torch.full((batch, c_len + r_len), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, c_len + r_len), dtype=torch.long)
    for i, (context, response) in enumerate(pairs):
        input_ids[i, c_len - len(context) : c_len] = context
        input_ids[i, c_len : c_len + len(response)] = response
        attention_mask[i, c_len - len(context) : c_len + len(response)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": attention_mask[:, c_len:]}


class ActorCritic(nn.Module):
    """The causal LM (actor) and the study's MLP value head (critic) on one forward pass."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        hidden = policy.config.get_text_config().hidden_size
        self.value_head = nn.Sequential(
            nn.Linear(hidden, hidden // 4),
            nn.ReLU(),
            nn.Linear(hidden // 4, hidden // 8),
            nn.ReLU(),
            nn.Linear(hidden // 8, 1),
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_mask: torch.Tensor,
        temperature: float,
        with_entropy: bool = False,
    ) -> tuple[torch.Tensor, ...]:
        """``(logp, value)`` per row of a :func:`collate` batch: the response's summed log-prob
        under ``softmax(logits / temperature)`` and the value of its context; with
        ``with_entropy`` also the entropy of that distribution, per response token, summed."""
        c_len = input_ids.shape[1] - response_mask.shape[1]
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
        hidden = self.policy.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # (B, C + R, H)
        head_dtype = self.value_head[0].weight.dtype
        value = self.value_head(hidden[:, c_len - 1].to(head_dtype)).squeeze(-1)  # (B,)
        logits = self.policy.get_output_embeddings()(hidden[:, c_len - 1 : -1]).float() / temperature  # (B, R, V)
        log_probs = logits.log_softmax(-1)  # (B, R, V)
        token_logp = log_probs.gather(-1, input_ids[:, c_len:, None]).squeeze(-1)  # (B, R)
        if not with_entropy:
            return (token_logp * response_mask).sum(-1), value
        entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, R)
        return (token_logp * response_mask).sum(-1), value, (entropy * response_mask).sum(-1)


# --------------------------------------------------------------------------------------------
# Rollout
# --------------------------------------------------------------------------------------------


class Sampler:
    """The ``generate(dialogues) -> texts`` of ``run_episodes``, sampling with temperature and
    keeping every (context ids, response ids) pair, one list per call (= per turn)."""

    def __init__(self, policy, tokenizer, template: str, cfg: PPOConfig):
        from sftrl.evaluate import GenerationSettings, Generator

        # Generator renders dialogues (plain or chat template) and tokenises them exactly as the
        # evaluation does; sampling is done here to keep the token ids. (Generator seeds torch
        # when built: build the sampler before seeding the run.)
        self.generator = Generator(policy, tokenizer, template, GenerationSettings(batch_size=cfg.rollout_batch_size))
        self.policy, self.tokenizer, self.cfg = policy, tokenizer, cfg
        eos = policy.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        self.eos_ids = torch.tensor(eos if isinstance(eos, list) else [eos])
        self.calls: list[list[tuple[torch.Tensor, torch.Tensor]]] = []

    def forget(self) -> None:
        """Drop the cached turns: :func:`play` calls it after each rollout (the update changes the policy)."""
        self.generator.forget()

    @torch.no_grad()
    def __call__(self, dialogues) -> list[str]:
        texts = [self.generator.render(d) for d in dialogues]
        pairs = []
        self.generator.next_turn(len(texts))  # continues the previous turn's KV cache (one batch)
        for start in range(0, len(texts), self.cfg.rollout_batch_size):
            prompts = self.generator.encode(texts[start : start + self.cfg.rollout_batch_size])
            out = self.generator.generate_ids(
                prompts,
                do_sample=True,
                temperature=self.cfg.temperature,
                top_k=0,
                top_p=1.0,
                max_new_tokens=self.cfg.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.eos_ids.tolist(),
            ).cpu()
            for prompt, response in zip(prompts, out, strict=True):
                is_eos = torch.isin(response, self.eos_ids)
                if is_eos.any():  # keep the first EOS, drop the padding after it
                    response = response[: int(is_eos.int().argmax()) + 1]
                pairs.append((torch.tensor(prompt, dtype=torch.long), response))
        self.calls.append(pairs)
        return self.tokenizer.batch_decode([r for _, r in pairs], skip_special_tokens=True)


@dataclass
class Rollout:
    """One process's rollout buffer: N actions (attempts) of E episodes of at most T turns."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]  # N (context ids, response ids)
    episode: torch.Tensor  # (N,) episode of each action
    turn: torch.Tensor  # (N,) turn of each action
    reward: torch.Tensor  # (N,) verifier reward
    solved: torch.Tensor  # (E,) an attempt was correct
    episodes: int
    turns: int


def play(sampler: Sampler, hands: pl.DataFrame, template: str, cfg: PPOConfig, check=check_formula) -> Rollout:
    """Play ``hands`` as the study's multi-turn episodes with the sampler's policy, scored by
    ``check`` (the verifier; tests swap in toy rewards)."""
    from sftrl.evaluate import run_episodes

    sampler.calls = []
    try:
        records = run_episodes(sampler, hands, template, cfg.turns, cfg.arithmetic, check)
    finally:
        # the update changes the weights, and scoring needs no cache: the next rollout starts empty
        sampler.forget()
    taken = records["turns"].to_list()
    rewards = records["rewards"].to_list()
    pairs, episode, turn, reward = [], [], [], []
    for t, call in enumerate(sampler.calls):
        active = [e for e, n in enumerate(taken) if n > t]  # run_episodes's order of the dialogues
        for e, pair in zip(active, call, strict=True):
            pairs.append(pair)
            episode.append(e)
            turn.append(t)
            reward.append(rewards[e][t])
    return Rollout(
        pairs=pairs,
        episode=torch.tensor(episode),
        turn=torch.tensor(turn),
        reward=torch.tensor(reward, dtype=torch.float32),
        solved=torch.tensor(records["solved"].to_list()),
        episodes=records.height,
        turns=cfg.turns,
    )


@torch.no_grad()
def score(
    model: ActorCritic, pairs, pad_id: int, cfg: PPOConfig, device, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Log-probs, values and (``with_entropy``) entropies summed over each response's tokens of
    every action, in micro-batches (no gradients); the entropies are None without it."""
    logps, values, entropies = [], [], []
    for start in range(0, len(pairs), cfg.micro_batch_size):
        batch = {k: v.to(device) for k, v in collate(pairs[start : start + cfg.micro_batch_size], pad_id).items()}
        logp, value, *entropy = model(**batch, temperature=cfg.temperature, with_entropy=with_entropy)
        logps.append(logp.float().cpu())
        values.append(value.float().cpu())
        entropies += [e.float().cpu() for e in entropy]
    return torch.cat(logps), torch.cat(values), torch.cat(entropies) if with_entropy else None


def length_bucketed_order(lengths: torch.Tensor, n_minibatches: int, minibatch_size: int) -> torch.Tensor:
    """The actions of one PPO epoch as ``n_minibatches`` minibatches of ``minibatch_size``, in order.

    A random permutation of the buffer, repeated from its start to fill the last minibatch (every
    optimiser step sees ``minibatch_size`` actions), is sorted by length (context + response) so
    each minibatch holds actions of similar length (a turn-5 dialogue is 5x longer than a first
    attempt: mixed batches would pad every row to the longest), and the minibatches are taken in
    random order. Which actions meet in a minibatch differs from epoch to epoch only among equal
    lengths; advantages are standardised over the whole buffer, not per minibatch.
    """
    n = len(lengths)
    perm = torch.randperm(n).repeat(math.ceil(n_minibatches * minibatch_size / n))[: n_minibatches * minibatch_size]
    perm = perm[torch.sort(lengths[perm], stable=True).indices]
    batches = perm.view(n_minibatches, minibatch_size)
    return batches[torch.randperm(n_minibatches)].reshape(-1)


def _per_episode(x: torch.Tensor, ro: Rollout) -> torch.Tensor:
    """(N,) action values -> (E, T), 0 where an episode had no such turn."""
    out = torch.zeros(ro.episodes, ro.turns, dtype=x.dtype)
    out[ro.episode, ro.turn] = x
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------

_STATE_RE = re.compile(r"^state-(\d+)$")


def _newest_state(work_dir: Path) -> tuple[int, Path | None]:
    found = [
        (int(m.group(1)), p)
        for p in work_dir.glob("state-*")
        if (m := _STATE_RE.match(p.name)) and (p / "progress.json").is_file()
    ]
    return max(found, default=(0, None))


def _save_state(accelerator, work_dir: Path, update: int, metrics_path: Path | None, trained: tuple) -> None:
    """Resumable state (weights, value head, optimiser, scheduler, RNG of every process, and the
    metrics logged so far) of ``trained`` = (model, optimizer, scheduler), as data (safetensors and
    JSON, no pickles: ``sftrl.state``), written to a temporary directory and renamed into place;
    older states are removed."""
    tmp = work_dir / f".state-{update:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        if metrics_path is not None and metrics_path.exists():
            shutil.copyfile(metrics_path, tmp / "metrics.jsonl")
    accelerator.wait_for_everyone()
    save_training_state(tmp, accelerator, *trained, progress={"update": update})  # progress.json last
    if accelerator.is_main_process:
        os.replace(tmp, work_dir / f"state-{update:06d}")
        for p in work_dir.glob("state-*"):
            if p.name != f"state-{update:06d}":
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def _sum_over_processes(accelerator, values: list) -> list[float]:
    local = torch.tensor([float(v) for v in values], dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(local, "sum").tolist()


def _hand_order(n: int, seed: int) -> list[int]:
    return random.Random(seed).sample(range(n), n)


def _update_hands(hands: pl.DataFrame, order: list[int], update: int, cfg: PPOConfig, rank: int, world: int):
    """This process's hands for ``update`` (1-based): the next ``episodes_per_update`` of a
    seeded permutation, cycling, split evenly across processes. A function of the update index
    alone, so a resumed run plays the same hands."""
    n, per = len(order), cfg.episodes_per_update // world
    start = (update - 1) * cfg.episodes_per_update + rank * per
    return hands[[order[(start + j) % n] for j in range(per)]]


def train_ppo(
    model_dir: str | os.PathLike,
    rl_hands: pl.DataFrame,
    template: str,
    cfg: PPOConfig,
    out_dir: str | os.PathLike,
    work_dir: str | os.PathLike,
    metrics_path: str | os.PathLike,
    dtype: str = "auto",
    stop_after: int | None = None,
    progress: bool = True,
    check=check_formula,
    report_to: str = "none",
    logging_dir: str | os.PathLike | None = None,
) -> dict:
    """PPO from the checkpoint ``model_dir`` on episodes over ``rl_hands`` (``sftrl.data.make_rl``).

    Runs updates ``1..cfg.num_updates``; logs one JSON line per update to ``metrics_path``; writes
    resumable state to ``work_dir`` every ``cfg.save_every`` updates and resumes from the newest
    one found there; saves the final policy (without the value head) as a Hugging Face checkpoint
    to ``out_dir`` and then removes ``work_dir``. ``stop_after`` ends the run after that update
    (saving its state, writing no model): an interruption, for tests. ``dtype`` is the weights'
    dtype; ``auto`` keeps float32 (see the module docstring). ``check(formula, numbers,
    arithmetic=...) -> Verdict`` scores the attempts (the study's verifier; tests pass toy rewards).
    ``report_to`` (``none``, ``tensorboard``, ``wandb``) sends each update's metrics there too
    (``sftrl.logs.MetricsReporter``; TensorBoard's to ``logging_dir``). Returns the last update's
    metrics.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from sftrl.logs import MetricsReporter, truncate_metrics
    from sftrl.models import load_model, load_tokenizer, save_model

    missing = {"hand_id", "cards", "numbers", "heldout", "prompt"} - set(rl_hands.columns)
    if missing:
        raise ValueError(f"rl_hands lacks columns {sorted(missing)}; build it with sftrl.data.make_rl")
    # cpu=True on a machine without a GPU: several CPU processes (torchrun) then join over gloo
    # instead of each training alone.
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg.minibatch_size // cfg.micro_batch_size, cpu=not torch.cuda.is_available()
    )
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.episodes_per_update % world:
        raise ValueError(
            f"episodes_per_update ({cfg.episodes_per_update}) must be a multiple of the number of processes ({world})"
        )
    work_dir, metrics_path = Path(work_dir), Path(metrics_path)
    work_dir.mkdir(parents=True, exist_ok=True)
    start, state_dir = _newest_state(work_dir)
    if stop_after is not None and not start < stop_after <= cfg.num_updates:
        raise ValueError(
            f"stop_after must be in {start + 1}..{cfg.num_updates} (resuming after update {start}), got {stop_after}"
        )

    tokenizer = load_tokenizer(model_dir)
    weights_dtype = "float32" if dtype == "auto" else dtype
    policy = load_model(model_dir, dtype=weights_dtype)
    sampler = Sampler(policy, tokenizer, template, cfg)
    torch.manual_seed(cfg.seed)  # the same value head on every process
    model = ActorCritic(policy)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    # Stepped once per update on every process, so it is not prepared (accelerate's prepared
    # scheduler would step once per process); sftrl.state saves it with the resumable state.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.num_updates, eta_min=cfg.lr_min)
    model, optimizer = accelerator.prepare(model, optimizer)
    reference = None
    if cfg.kl_coef > 0:
        reference = ActorCritic(load_model(model_dir, dtype=weights_dtype))  # its value head is unused
        reference.requires_grad_(False).eval().to(accelerator.device)
    set_seed(cfg.seed + rank)  # sampling differs per process (study: seed + process index)
    if state_dir is not None:
        load_training_state(state_dir, accelerator, model, optimizer, scheduler)  # data only, no pickles
    if accelerator.is_main_process:
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if state_dir is not None and (state_dir / "metrics.jsonl").is_file():
            # the rows up to the state (the metrics file is an output: a rerun may have removed it)
            shutil.copyfile(state_dir / "metrics.jsonl", metrics_path)
        truncate_metrics(metrics_path, start)
    reporter = MetricsReporter(report_to if accelerator.is_main_process else "none", logging_dir, Path(out_dir).name)

    actor_critic: ActorCritic = accelerator.unwrap_model(model)
    pad_id = tokenizer.pad_token_id
    order = _hand_order(rl_hands.height, cfg.seed)
    last = stop_after or cfg.num_updates
    bar = tqdm(
        range(start + 1, last + 1),
        initial=start,
        total=cfg.num_updates,
        desc="ppo",
        disable=not (progress and accelerator.is_main_process),
    )
    row: dict = {}
    for update in bar:
        tic = time.perf_counter()
        # --- rollout: episodes with the current policy, then log-probs and values of each action
        actor_critic.eval()
        with accelerator.autocast():  # the precision of the training forward (bf16 under mixed precision)
            ro = play(sampler, _update_hands(rl_hands, order, update, cfg, rank, world), template, cfg, check)
            old_logp, old_value, entropy = score(actor_critic, ro.pairs, pad_id, cfg, accelerator.device)  # (N,) each
            if reference is not None:
                ref_logp, _, _ = score(reference, ro.pairs, pad_id, cfg, accelerator.device, with_entropy=False)
        reward = ro.reward
        if reference is not None:
            kl_ref = kl_estimate(old_logp, ref_logp, "k1")  # log pi(a|s) - log pi_ref(a|s), per action
            reward = reward - cfg.kl_coef * kl_ref

        # --- advantages: GAE over each episode's turns, standardised over this buffer
        mask = _per_episode(torch.ones_like(reward), ro)  # (E, T)
        adv, ret = gae(_per_episode(reward, ro), _per_episode(old_value, ro), mask, cfg.gamma, cfg.lam)
        adv = masked_whiten(adv, mask)[ro.episode, ro.turn]  # (N,)
        ret = ret[ro.episode, ro.turn]  # (N,)

        # --- update: ppo_epochs passes of equal-sized minibatches, as many on every process
        actor_critic.train()
        n_actions = len(ro.pairs)
        most = int(accelerator.gather(torch.tensor([n_actions], device=accelerator.device)).max())
        n_minibatches = math.ceil(most / cfg.minibatch_size)
        lengths = torch.tensor([len(c) + len(r) for c, r in ro.pairs])
        lr = scheduler.get_last_lr()[0]
        losses = {"policy_loss": [], "value_loss": [], "clipfrac": [], "approx_kl": []}
        for epochs in range(1, cfg.ppo_epochs + 1):  # noqa: B007 (after the loop: the epochs run)
            epoch_start = len(losses["approx_kl"])
            perm = length_bucketed_order(lengths, n_minibatches, cfg.minibatch_size)
            for first in range(0, n_minibatches * cfg.minibatch_size, cfg.micro_batch_size):
                idx = perm[first : first + cfg.micro_batch_size]
                batch = collate([ro.pairs[i] for i in idx], pad_id)
                with accelerator.accumulate(model):
                    new_logp, new_value = model(**{k: v.to(accelerator.device) for k, v in batch.items()},
                                                temperature=cfg.temperature)  # fmt: skip
                    on = new_logp.device
                    pg_loss, clipfrac, approx_kl = clipped_policy_loss(
                        new_logp, old_logp[idx].to(on), adv[idx].to(on), cfg.clip
                    )
                    v_loss = clipped_value_loss(new_value.float(), old_value[idx].to(on), ret[idx].to(on), cfg.clip)
                    accelerator.backward(pg_loss + cfg.vf_coef * v_loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                for name, value in zip(losses, (pg_loss, v_loss, clipfrac, approx_kl), strict=True):
                    losses[name].append(float(value.detach()))
            if cfg.target_kl is not None:
                epoch_kl = losses["approx_kl"][epoch_start:]
                mean_kl = _sum_over_processes(accelerator, [sum(epoch_kl) / len(epoch_kl) / world])[0]
                if mean_kl > cfg.target_kl:  # every process sees the same mean, so all stop together
                    break
        scheduler.step()

        # --- metrics: sums over this process's buffer, then over all processes
        residual = ret - old_value
        local = {
            "reward": ro.reward.sum(), "actions": n_actions, "solved": ro.solved.sum(), "episodes": ro.episodes,
            "ret": ret.sum(), "ret2": (ret**2).sum(), "res": residual.sum(), "res2": (residual**2).sum(),
            "kl_ref": kl_ref.sum() if reference is not None else 0.0,
            "entropy": entropy.sum(), "tokens": sum(len(r) for _, r in ro.pairs),
            **{name: sum(values) / len(values) / world for name, values in losses.items()},
        }  # fmt: skip
        total = dict(zip(local, _sum_over_processes(accelerator, list(local.values())), strict=True))
        n = total["actions"]
        var_ret = total["ret2"] / n - (total["ret"] / n) ** 2
        var_res = total["res2"] / n - (total["res"] / n) ** 2
        row = {
            "update": update,
            "charts/mean_reward": total["reward"] / n,  # per attempt
            "charts/success_rate": total["solved"] / total["episodes"],  # episodes with a correct attempt
            "charts/mean_turns": n / total["episodes"],
            "charts/episodes": int(total["episodes"]),  # over all processes
            "charts/learning_rate": lr,
            "charts/entropy": total["entropy"] / total["tokens"],  # per sampled token (nats, at the temperature)
            **{f"losses/{name}": total[name] for name in losses},
            "losses/explained_variance": 1 - var_res / var_ret if var_ret > 0 else float("nan"),
            "losses/epochs": epochs,  # ppo_epochs unless target_kl stopped the update early
            "time/update_seconds": time.perf_counter() - tic,
        }
        if reference is not None:
            row["charts/kl_to_reference"] = total["kl_ref"] / n
        if accelerator.is_main_process:
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            reporter.log(row, update)
        bar.set_postfix(reward=f"{row['charts/mean_reward']:.2f}", solved=f"{row['charts/success_rate']:.2f}")
        if (cfg.save_every and update % cfg.save_every == 0) or update == stop_after:
            _save_state(accelerator, work_dir, update, metrics_path, (model, optimizer, scheduler))
    bar.close()
    reporter.close()
    if not row and metrics_path.exists():  # resumed from the final state: nothing left to train
        lines = metrics_path.read_text().splitlines()
        row = json.loads(lines[-1]) if lines else {}

    if stop_after is None:
        if accelerator.is_main_process:
            save_model(actor_critic.policy, tokenizer, out_dir)
            shutil.rmtree(work_dir, ignore_errors=True)
        accelerator.wait_for_everyone()
    return row
