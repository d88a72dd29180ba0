"""PPO (sftrl.ppo) and GRPO (sftrl.grpo): pure functions on hand-computed numbers, the actor-critic
and rollout on a tiny model, learning, exact resume, and a GRPO smoke run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftrl import data
from sftrl.game import Verdict
from sftrl.grpo import make_reward_function, train_grpo
from sftrl.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer
from sftrl.ppo import (
    ActorCritic,
    PPOConfig,
    Sampler,
    clipped_policy_loss,
    clipped_value_loss,
    collate,
    gae,
    kl_estimate,
    length_bucketed_order,
    masked_whiten,
    play,
    score,
    train_ppo,
)
from sftrl.sft import TrainSettings, train_segment

T = torch.tensor
ARCH = dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2, max_position_embeddings=64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are too small to gain from a second thread, and on a shared 2-core machine a
    # second OpenMP thread spin-waits against the other jobs (measured: 10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# GAE


def test_gae_two_episodes_by_hand():
    # gamma = lam = 0.5, so gamma * lam = 0.25.
    # Episode 1, three real steps: r = 1, 0, 2; V = 1, 2, 4.
    #   t=2: delta = 2 + 0 (episode over)   - 4 = -2     A = -2
    #   t=1: delta = 0 + 0.5*4              - 2 =  0     A = 0 + 0.25*(-2)   = -0.5
    #   t=0: delta = 1 + 0.5*2              - 1 =  1     A = 1 + 0.25*(-0.5) =  0.875
    #   returns = A + V = 1.875, 1.5, 2
    # Episode 2, one real step then padding whose (garbage) values must not leak in:
    #   t=0: delta = 3 + 0 - 1 = 2 = A; return 3; padded steps 0.
    rewards = T([[1.0, 0.0, 2.0], [3.0, 9.0, 9.0]])
    values = T([[1.0, 2.0, 4.0], [1.0, 7.0, 7.0]])
    mask = T([[1, 1, 1], [1, 0, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=0.5)
    torch.testing.assert_close(adv, T([[0.875, -0.5, -2.0], [2.0, 0.0, 0.0]]))
    torch.testing.assert_close(ret, T([[1.875, 1.5, 2.0], [3.0, 0.0, 0.0]]))


def test_gae_limits_and_the_study_values():
    rewards, values, mask = T([[1.0, 0.0, 2.0]]), T([[1.0, 2.0, 4.0]]), T([[1, 1, 1]])
    # lam = 1, gamma = 1: Monte Carlo, A_t = (rewards to go) - V_t = (3, 2, 2) - (1, 2, 4)
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, T([[2.0, 0.0, -2.0]]))
    # lam = 0: one-step TD, A_t = r_t + gamma V_{t+1} - V_t = 1 + 1 - 1, 0 + 2 - 2, 2 + 0 - 4
    adv, _ = gae(rewards, values, mask, gamma=0.5, lam=0.0)
    torch.testing.assert_close(adv, T([[1.0, 0.0, -2.0]]))
    # the study's gamma 0.9, lam 0.95, V = 0: a failed attempt (-1) then a correct one (+5):
    #   A_1 = 5;  A_0 = -1 + 0.9*0.95*5 = -1 + 4.275 = 3.275
    adv, ret = gae(T([[-1.0, 5.0]]), T([[0.0, 0.0]]), T([[1, 1]]), gamma=0.9, lam=0.95)
    torch.testing.assert_close(adv, T([[3.275, 5.0]]))
    torch.testing.assert_close(ret, T([[3.275, 5.0]]))


def test_masked_whiten_by_hand():
    # real entries 1, 2, 3: mean 2, unbiased variance (1 + 0 + 1) / 2 = 1, std 1; the 100 is padding
    out = masked_whiten(T([[1.0, 2.0], [3.0, 100.0]]), T([[1, 1], [1, 0]]))
    torch.testing.assert_close(out, T([[-1.0, 0.0], [1.0, 0.0]]) / (1 + 1e-5))


# ---------------------------------------------------------------------------------------------
# losses and KL


def test_clipped_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.05, 20 (logp_old = 0); advantages 1, 1, -2, -1; clip 0.2 -> [0.8, 1.2]
    #   a: min(1.5*1, 1.2*1)        =  1.2    -> -1.2   (clipped: no gradient)
    #   b: min(0.5*1, 0.8*1)        =  0.5    -> -0.5   (unclipped: gradient -A*ratio/4 = -0.125)
    #   c: min(1.05*-2, 1.05*-2)    = -2.1    ->  2.1   (inside the range: gradient 2*1.05/4 = 0.525)
    #   d: ratio 20 > 10, the study's guard uses the clipped term: -(1.2*-1) = 1.2 (no gradient)
    #      (without the guard: min(-20, -1.2) = -20 -> 20)
    # loss = (-1.2 - 0.5 + 2.1 + 1.2) / 4 = 0.4;  without guard (-1.2 - 0.5 + 2.1 + 20) / 4 = 5.1
    # clipfrac: |ratio - 1| > 0.2 for a, b, d -> 3/4
    # approx_kl = mean((r - 1) - ln r) = (0.094535 + 0.193147 + 0.001210 + 16.004268) / 4 = 4.073290
    logp_new = torch.log(T([1.5, 0.5, 1.05, 20.0])).requires_grad_()
    logp_old, adv = torch.zeros(4), T([1.0, 1.0, -2.0, -1.0])
    loss, clipfrac, approx_kl = clipped_policy_loss(logp_new, logp_old, adv, clip=0.2)
    torch.testing.assert_close(loss, T(0.4))
    torch.testing.assert_close(clipfrac, T(0.75))
    torch.testing.assert_close(approx_kl, T(4.073290), atol=1e-5, rtol=0)
    loss.backward()
    torch.testing.assert_close(logp_new.grad, T([0.0, -0.125, 0.525, 0.0]))
    unguarded, _, _ = clipped_policy_loss(logp_new, logp_old, adv, clip=0.2, ratio_guard=None)
    torch.testing.assert_close(unguarded, T(5.1))


def test_clipped_value_loss_by_hand():
    # clip 0.2
    #   a: v_old 0, v_new 0.5, R 1: unclipped (0.5-1)^2 = 0.25; clipped v = 0.2: (0.2-1)^2 = 0.64 -> 0.64
    #   b: v_old 0, v_new -0.05, R 1: inside the clip range, both (-1.05)^2 = 1.1025
    #   c: v_old 1, v_new 1, R 0: both 1
    # loss = 0.5 * (0.64 + 1.1025 + 1) / 3 = 0.5 * 0.9141667 = 0.4570833
    loss = clipped_value_loss(T([0.5, -0.05, 1.0]), T([0.0, 0.0, 1.0]), T([1.0, 1.0, 0.0]), clip=0.2)
    torch.testing.assert_close(loss, T(0.4570833))


def test_kl_estimators_by_hand():
    # one sample: p = 0.5, p_ref = 0.25, r = ln(p_ref / p) = -ln 2 = -0.693147
    #   k1 = -r = 0.693147;  k2 = r^2 / 2 = 0.240227;  k3 = (e^r - 1) - r = -0.5 + 0.693147 = 0.193147
    logp, logp_ref = torch.log(T([0.5])), torch.log(T([0.25]))
    torch.testing.assert_close(kl_estimate(logp, logp_ref, "k1"), T([0.693147]))
    torch.testing.assert_close(kl_estimate(logp, logp_ref, "k2"), T([0.240227]))
    torch.testing.assert_close(kl_estimate(logp, logp_ref, "k3"), T([0.193147]))
    # unbiasedness of k1 and k3 on p = (0.5, 0.5), p_ref = (0.25, 0.75):
    #   KL = 0.5 ln 2 + 0.5 ln(2/3) = 0.5 (0.693147 - 0.405465) = 0.143841
    #   k3 per outcome: (-0.5 + 0.693147, 0.5 - 0.405465) = (0.193147, 0.094535), mean 0.143841
    p, q = T([0.5, 0.5]), T([0.25, 0.75])
    for kind in ("k1", "k3"):
        torch.testing.assert_close((p * kl_estimate(p.log(), q.log(), kind)).sum(), T(0.143841))
    with pytest.raises(ValueError, match="k1, k2 or k3"):
        kl_estimate(logp, logp_ref, "k4")


# ---------------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "change, fix",
    [
        (dict(minibatch_size=12, micro_batch_size=8), "multiple of micro_batch_size"),
        (dict(temperature=0.0), "temperature must be > 0"),
        (dict(lr_min=1.0), "lr_min must be in"),
        (dict(turns=0), "turns must be an int >= 1"),
        (dict(arithmetic="fuzzy"), "arithmetic must be one of"),
        (dict(lr="1e-6"), r"decimal point \(1.0e-6\)"),
    ],
)
def test_config_errors_state_the_fix(change, fix):
    with pytest.raises(ValueError, match=fix):
        PPOConfig(**change)


def test_config_from_dict_rejects_unknown_keys():
    assert PPOConfig.from_dict({"turns": 1, "lr": 1.0e-4}).turns == 1
    with pytest.raises(ValueError, match="unknown keys \\['lr_max'\\]; valid keys: turns"):
        PPOConfig.from_dict({"lr_max": 1.0})


def test_config_defaults_are_the_study():
    cfg = PPOConfig()
    assert (cfg.turns, cfg.gamma, cfg.lam, cfg.clip, cfg.vf_coef, cfg.ppo_epochs) == (5, 0.9, 0.95, 0.1, 0.5, 4)
    assert (cfg.lr, cfg.lr_min, cfg.adam_eps, cfg.max_grad_norm, cfg.temperature, cfg.kl_coef) == (
        1e-6, 1e-9, 1e-7, 0.01, 0.2, 0.0)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# actor-critic and rollout on a tiny model


def test_collate_left_pads_contexts_and_right_pads_responses():
    batch = collate([(T([5, 6, 7]), T([8])), (T([9]), T([10, 11]))], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 0], [0, 0, 9, 10, 11]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert batch["response_mask"].tolist() == [[1, 0], [1, 1]]


def test_actor_critic_scores_padded_batches_like_single_sequences():
    # The log-prob of a response in a padded batch equals the sum of its tokens' log-probs from a
    # plain forward pass of the unpadded sequence (padding, masks and positions are right).
    tok = build_tiny_tokenizer()
    torch.manual_seed(0)
    model = ActorCritic(build_tiny_model(ARCH, tok, 0)).eval()
    assert [m.out_features for m in model.value_head if isinstance(m, torch.nn.Linear)] == [16, 8, 1]
    pairs = [(T([1, 10, 11, 12]), T([13, 14, 2])), (T([1, 15]), T([16, 2])), (T([1, 17, 18]), T([19]))]
    logp, value = model(**collate(pairs, tok.pad_token_id), temperature=0.5)
    assert value.shape == (3,)
    for i, (context, response) in enumerate(pairs):
        ids = torch.cat([context, response])[None]
        with torch.no_grad():
            logits = model.policy(ids).logits[0, len(context) - 1 : -1] / 0.5
            hidden = model.policy.model(ids).last_hidden_state[0, len(context) - 1]
        expected = logits.log_softmax(-1).gather(-1, response[:, None]).sum()
        torch.testing.assert_close(logp[i], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value[i], model.value_head(hidden).squeeze(), atol=1e-5, rtol=1e-5)


def test_rollout_continues_failed_episodes_with_the_feedback_turn():
    tok = build_tiny_tokenizer()
    policy = build_tiny_model(ARCH, tok, 0)  # untrained: every attempt fails
    cfg = PPOConfig(turns=3, temperature=1.0, max_new_tokens=6)
    sampler = Sampler(policy, tok, "compact", cfg)
    ro = play(sampler, data.make_rl(4, 0, "compact"), "compact", cfg)
    assert ro.turn.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and ro.episode.tolist() == list(range(4)) * 3
    assert not ro.solved.any() and (ro.reward < 0).all()
    feedback = tok("!", add_special_tokens=False)["input_ids"]
    special = T(tok.all_special_ids)
    for i in range(8):  # context of turn t+1 = context + response's text (no EOS, no specials) + "!..."
        (context, response), (next_context, _) = ro.pairs[i], ro.pairs[i + 4]
        response = response[~torch.isin(response, special)]
        start = context.tolist() + response.tolist() + feedback
        assert next_context.tolist()[: len(start)] == start
        assert tok.decode(next_context[len(start) - 1 :]).endswith("|")  # the verdict: "!x||", "!n10|11 7|"
    logp, value, entropy = score(ActorCritic(policy), ro.pairs, tok.pad_token_id, cfg, "cpu")
    assert logp.shape == value.shape == entropy.shape == (12,) and (logp < 0).all() and (entropy > 0).all()


# ---------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def start_model(tmp_path_factory) -> Path:
    """A weak SFT model (64 wide, 2 layers, 300 steps from scratch): legal formulas with the
    hand's numbers some of the time, rarely right -- room for PPO to show progress."""
    root = tmp_path_factory.mktemp("start")
    tok = build_tiny_tokenizer()
    hp = TrainSettings(max_steps=300, lr=3e-3, scheduler="cosine", warmup=5, batch_size=32,
                       per_device_batch_size=32, seed=0)  # fmt: skip
    train_segment(build_tiny_model(ARCH, tok, 0), tok, data.make_sft(300 * 32, 0, "compact"), hp, 300,
                  root / "sft", root / "work")  # fmt: skip
    return root / "sft"


def _cfg(**kw) -> PPOConfig:
    base = dict(turns=1, temperature=0.5, max_new_tokens=16, num_updates=2, episodes_per_update=64,
                minibatch_size=32, micro_batch_size=32, rollout_batch_size=64, lr=3e-4, lr_min=3e-4,
                max_grad_norm=1.0, save_every=0)  # fmt: skip
    return PPOConfig(**{**base, **kw})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_ppo_raises_the_mean_reward(tmp_path, start_model):
    # Eight hands, each played 8 times per update: the policy can learn their solutions. Measured
    # on this machine (seeds 0-2, two start models): the mean reward of the last three updates is
    # 1.0-1.7 above that of the first three, and some hands become solved.
    hands = data.make_rl(8, 1, "compact")
    cfg = _cfg(num_updates=15, lr_min=3e-5)
    metrics = tmp_path / "metrics.jsonl"
    last = train_ppo(start_model, hands, "compact", cfg, tmp_path / "ppo", tmp_path / "work", metrics, progress=False)
    rows = _rows(metrics)
    assert [r["update"] for r in rows] == list(range(1, 16)) and last == rows[-1]
    for key in (
        "charts/mean_reward",
        "charts/success_rate",
        "losses/approx_kl",
        "losses/clipfrac",
        "losses/explained_variance",
        "losses/value_loss",
        "losses/policy_loss",
        "charts/learning_rate",
    ):
        assert all(math.isfinite(r[key]) for r in rows), key
    reward = [r["charts/mean_reward"] for r in rows]
    assert sum(reward[-3:]) / 3 > sum(reward[:3]) / 3 + 0.5, reward
    # cosine from lr to lr_min over the run, logged as the rate each update used
    lrs = [r["charts/learning_rate"] for r in rows]
    assert lrs[0] == pytest.approx(3e-4)
    assert lrs[-1] == pytest.approx(3e-5 + 2.7e-4 * (1 + math.cos(math.pi * 14 / 15)) / 2)  # after 14 of 15 steps
    assert not (tmp_path / "work").exists()
    # the output is a plain checkpoint without the value head
    assert not any("value_head" in k for k in load_file(tmp_path / "ppo" / "model.safetensors"))
    assert load_model(tmp_path / "ppo").config.hidden_size == 64


def _stars(formula, numbers, arithmetic="exact") -> Verdict:
    """A toy verifier: +1 per '*' in the answer, never solved (the episode is one attempt)."""
    return Verdict(float((formula or "").count("*")), "", "no_solution", False, False, formula or "")


@pytest.mark.parametrize("broken", [False, True], ids=["ppo", "advantage-sign-flipped"])
def test_ppo_optimises_a_toy_reward_and_a_broken_ppo_does_not(tmp_path, start_model, monkeypatch, broken):
    # The same run twice: PPO must raise its own reward; with the advantages' sign flipped (a
    # classic bug) the same check must fail -- the reward falls -- so this test can fail.
    from sftrl import ppo

    if broken:
        whiten = ppo.masked_whiten
        monkeypatch.setattr(ppo, "masked_whiten", lambda x, mask: -whiten(x, mask))
    cfg = _cfg(num_updates=8, temperature=1.0, lr=3e-4, lr_min=3e-4, target_kl=0.5)
    metrics = tmp_path / "metrics.jsonl"
    train_ppo(start_model, data.make_rl(64, 4, "compact"), "compact", cfg, tmp_path / "ppo", tmp_path / "w", metrics,
              progress=False, check=_stars)  # fmt: skip
    rows = _rows(metrics)
    reward = [r["charts/mean_reward"] for r in rows]
    first, last = sum(reward[:3]) / 3, sum(reward[-3:]) / 3
    for key in ("charts/entropy", "losses/approx_kl", "losses/clipfrac", "losses/explained_variance", "losses/epochs"):
        assert all(math.isfinite(r[key]) for r in rows), key
    if broken:
        assert last < first, reward
    else:
        assert last > first + 0.3, reward


def test_target_kl_stops_an_update_early(tmp_path, start_model):
    # A large step and a tiny target: every update stops after its first epoch, and says so.
    cfg = _cfg(num_updates=2, lr=3e-3, lr_min=3e-3, ppo_epochs=4, target_kl=1e-6, temperature=1.0)
    train_ppo(start_model, data.make_rl(64, 5, "compact"), "compact", cfg, tmp_path / "ppo", tmp_path / "w",
              tmp_path / "m.jsonl", progress=False)  # fmt: skip
    assert [r["losses/epochs"] for r in _rows(tmp_path / "m.jsonl")] == [1, 1]
    cfg = _cfg(num_updates=1, ppo_epochs=3, target_kl=None)
    train_ppo(start_model, data.make_rl(64, 5, "compact"), "compact", cfg, tmp_path / "ppo2", tmp_path / "w2",
              tmp_path / "m2.jsonl", progress=False)  # fmt: skip
    assert [r["losses/epochs"] for r in _rows(tmp_path / "m2.jsonl")] == [3]


def test_resume_after_an_interruption_equals_an_uninterrupted_run(tmp_path, start_model):
    hands = data.make_rl(32, 2, "compact")
    cfg = _cfg(episodes_per_update=16, minibatch_size=8, micro_batch_size=4, save_every=1, lr_min=1e-5)
    train_ppo(start_model, hands, "compact", cfg, tmp_path / "full", tmp_path / "w0", tmp_path / "m0.jsonl",
              progress=False)  # fmt: skip
    # interrupted after update 1 (state saved), then rerun: resumes at update 2
    train_ppo(start_model, hands, "compact", cfg, tmp_path / "resumed", tmp_path / "w1", tmp_path / "m1.jsonl",
              stop_after=1, progress=False)  # fmt: skip
    assert not (tmp_path / "resumed").exists() and (tmp_path / "w1" / "state-000001" / "progress.json").is_file()
    train_ppo(start_model, hands, "compact", cfg, tmp_path / "resumed", tmp_path / "w1", tmp_path / "m1.jsonl",
              progress=False)  # fmt: skip
    full = load_file(tmp_path / "full" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    start = load_file(start_model / "model.safetensors")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not all(torch.equal(full[k], start[k]) for k in full)

    def strip(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    assert strip(_rows(tmp_path / "m0.jsonl")) == strip(_rows(tmp_path / "m1.jsonl"))


def test_kl_penalty_to_the_reference_is_logged(tmp_path, start_model):
    cfg = _cfg(num_updates=1, episodes_per_update=8, minibatch_size=8, micro_batch_size=8, kl_coef=0.1)
    train_ppo(start_model, data.make_rl(8, 3, "compact"), "compact", cfg, tmp_path / "ppo", tmp_path / "w",
              tmp_path / "m.jsonl", progress=False)  # fmt: skip
    # the rollout policy is the reference in update 1: their KL is 0 up to float noise
    assert _rows(tmp_path / "m.jsonl")[0]["charts/kl_to_reference"] == pytest.approx(0.0, abs=1e-4)


# ---------------------------------------------------------------------------------------------
# GRPO


@pytest.mark.parametrize(
    "completion, numbers, reward",
    [
        ("(10-4)*(2+2)", [10, 4, 2, 2], 5.0),  # correct
        ("(10-4)*(2+2)=24", [10, 4, 2, 2], 5.0),  # "= 24" tail dropped
        ("10+4+2+2", [10, 4, 2, 2], -1.0),  # right numbers, wrong value
        ("10+4+2", [10, 4, 2, 2], -2.0),  # a number unused
        ("10 + 4", [10, 4, 2, 2], -3.0),  # whitespace is illegal
        ("", [10, 4, 2, 2], -3.0),  # no formula at all
        ([{"role": "assistant", "content": "(10-4)*(2+2)"}], [10, 4, 2, 2], 5.0),  # chat-form completion
    ],
)
def test_grpo_reward_function(completion, numbers, reward):
    f = make_reward_function("compact")
    assert f(prompts=["p"], completions=[completion], numbers=[numbers], trainer_state=None) == [reward]


def test_grpo_writes_a_loadable_checkpoint(tmp_path, start_model):
    from transformers import AutoModelForCausalLM

    cfg = _cfg(num_updates=1, episodes_per_update=16, minibatch_size=8, micro_batch_size=8, ppo_epochs=1)
    train_grpo(start_model, data.make_rl(16, 4, "compact"), "compact", cfg, tmp_path / "grpo", tmp_path / "w",
               tmp_path / "m.jsonl", num_generations=4)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "grpo")
    assert model.config.hidden_size == 64 and load_tokenizer(tmp_path / "grpo").eos_token == "</s>"
    row = _rows(tmp_path / "m.jsonl")[-1]
    assert row["update"] == 1 and math.isfinite(row["charts/mean_reward"])
    assert not (tmp_path / "w").exists()


def test_length_bucketed_order_covers_the_buffer_in_equal_sorted_minibatches():
    torch.manual_seed(0)
    lengths = torch.tensor([20, 90, 21, 40, 19, 95, 60, 22, 41, 20])  # 10 actions
    order = length_bucketed_order(lengths, n_minibatches=3, minibatch_size=4)  # 12 slots: 2 repeated
    assert order.shape == (12,)
    assert set(order.tolist()) == set(range(10))  # every action, and two of them twice
    batches = order.view(3, 4)
    spans = sorted((int(lengths[b].min()), int(lengths[b].max())) for b in batches)
    assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:], strict=False))  # no overlap
