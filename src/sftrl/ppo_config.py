"""The study's PPO settings (``rl:`` in the config), apart from the trainer (``sftrl.ppo``).

Kept in its own module without torch, so checking a config (``sftrl.config``, at every DAG build,
dry-runs included) does not import torch: seconds for each ``snakemake`` call.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sftrl.game import ARITHMETIC_MODES


@dataclass
class PPOConfig:
    """Every PPO setting, with the study's value (docs/study.md §6) as the default.

    The tiny default study overrides some of them in ``config.yaml`` (``rl:``).
    """

    # --- episodes ---
    turns: int = 5  # attempts per episode; a failed one gets the verifier's feedback (study: verify_iter 5)
    temperature: float = 0.2  # sampling temperature of the rollouts, and of the log-probs (study: 0.2)
    max_new_tokens: int = 512  # tokens per response (study: 512; the tiny model needs ~24)
    arithmetic: str = "exact"  # verifier arithmetic, exact | float (study: float, see sftrl.game)
    # --- schedule ---
    num_updates: int = 100  # PPO updates, each a fresh rollout (study: Llama 100, Qwen 300)
    episodes_per_update: int = 128  # whole episodes per rollout, all processes (study: 128 steps x 4 processes)
    minibatch_size: int = 128  # actions per optimiser step per process (study: mini-batch 1 x grad_accum 128)
    micro_batch_size: int = 8  # actions per forward/backward; accumulated to minibatch_size (memory only)
    rollout_batch_size: int = 64  # dialogues generated together (memory only)
    ppo_epochs: int = 4  # passes over each rollout (study: ppo_epoch 4)
    # --- returns ---
    gamma: float = 0.9  # discount over the turns of an episode (study: 0.9)
    lam: float = 0.95  # GAE lambda (study: 0.95)
    # --- losses ---
    clip: float = 0.1  # ratio clip of the surrogate and clip of the value change (study: clip_param 0.1)
    vf_coef: float = 0.5  # weight of the value loss (study: value_loss_coef 0.5)
    kl_coef: float = 0.0  # KL penalty to the frozen starting model, per action (study: none, 0.0)
    # --- optimiser ---
    lr: float = 1e-6  # Adam learning rate at the start (study: init_lr 1e-6)
    lr_min: float = 1e-9  # cosine decay over num_updates ends here (study: eta_min 1e-9)
    adam_eps: float = 1e-7  # Adam epsilon (study: 1e-7; weight decay 0)
    max_grad_norm: float = 0.01  # gradient norm clip (study: 0.01)
    # Stop an update's remaining epochs once the mean approx-KL(old || new) of an epoch passes this
    # (cleanrl's guard against an update that moves the policy too far); None = never (study: none)
    target_kl: float | None = None
    # --- bookkeeping ---
    seed: int = 0  # sampling seed (+ process index) and hand order (study: 0)
    save_every: int = 5  # resumable state every N updates, 0 = never (study: Llama 5, Qwen 50)

    @classmethod
    def from_dict(cls, values: dict) -> PPOConfig:
        """From a config section (e.g. ``rl.ppo`` of a study config); unknown keys are errors."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"PPOConfig: unknown keys {unknown}; valid keys: {', '.join(known)}")
        return cls(**values)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(f"PPOConfig: {message}")

        for name in (
            "temperature",
            "gamma",
            "lam",
            "clip",
            "vf_coef",
            "kl_coef",
            "lr",
            "lr_min",
            "adam_eps",
            "max_grad_norm",
        ):
            value = getattr(self, name)
            need(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                f"{name} must be a number, got {value!r} ({type(value).__name__}); "
                "in YAML write exponents with a decimal point (1.0e-6), or PyYAML reads a string",
            )
        for name in (
            "turns",
            "max_new_tokens",
            "num_updates",
            "episodes_per_update",
            "minibatch_size",
            "micro_batch_size",
            "rollout_batch_size",
            "ppo_epochs",
        ):
            value = getattr(self, name)
            need(isinstance(value, int) and value >= 1, f"{name} must be an int >= 1, got {value!r}")
        need(
            self.temperature > 0,
            f"temperature must be > 0 (log-probs need a sampling distribution), "
            f"got {self.temperature}; use a small value such as 0.2 for near-greedy rollouts",
        )
        need(
            self.arithmetic in ARITHMETIC_MODES,
            f"arithmetic must be one of {ARITHMETIC_MODES}, got {self.arithmetic!r}",
        )
        need(
            self.minibatch_size % self.micro_batch_size == 0,
            f"minibatch_size ({self.minibatch_size}) must be a multiple of micro_batch_size "
            f"({self.micro_batch_size}); set micro_batch_size to a divisor of it",
        )
        need(0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}")
        need(0 <= self.lam <= 1, f"lam must be in [0, 1], got {self.lam}")
        need(self.clip > 0, f"clip must be > 0, got {self.clip}")
        need(self.vf_coef >= 0, f"vf_coef must be >= 0, got {self.vf_coef}")
        need(self.kl_coef >= 0, f"kl_coef must be >= 0 (0 disables the penalty), got {self.kl_coef}")
        need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        need(0 <= self.lr_min <= self.lr, f"lr_min must be in [0, lr={self.lr}], got {self.lr_min}")
        need(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(
            self.target_kl is None
            or (
                isinstance(self.target_kl, (int, float)) and not isinstance(self.target_kl, bool) and self.target_kl > 0
            ),
            f"target_kl must be a number > 0 or null (no early stop), got {self.target_kl!r}",
        )
        need(
            isinstance(self.save_every, int) and self.save_every >= 0,
            f"save_every must be an int >= 0 (0 = no intermediate state), got {self.save_every!r}",
        )
