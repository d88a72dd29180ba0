"""Multi-turn generation continued from the previous turn's KV cache (sftrl.prefix_cache) gives the
answers of generation from the whole dialogue, reads fewer tokens, and is dropped when it must be."""

import pytest
import torch

from sftrl import data
from sftrl.chatmodel import build_model, build_tokenizer, game_corpus
from sftrl.evaluate import GenerationSettings, Generator, run_episodes
from sftrl.models import build_tiny_model, build_tiny_tokenizer
from sftrl.ppo import PPOConfig, Sampler, play

ARCH = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=192)


def _sensitive(model, seed=0):
    """Large random weights: answers that depend on every token of the context (a freshly built
    model answers the same token whatever it reads, so no cache mistake could show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer()
    return _sensitive(build_tiny_model(ARCH, tok, 0)), tok


@pytest.fixture(scope="module")
def chat():
    """The rehearsal's kind of model: Qwen2, BPE tokenizer, chat template, sampling settings."""
    tok = build_tokenizer(game_corpus(hands=200, seed=0))
    arch = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024)  # fmt: skip
    return _sensitive(build_model(tok, seed=0, arch=arch)), tok


def _play(model, tok, template, hands, settings, reuse, turns=5):
    gen = Generator(model, tok, template, settings, reuse_cache=reuse)
    reads = []
    real = gen.generate_ids

    def counting(prompts, **kwargs):  # the tokens each turn's batches give the model to read
        out = real(prompts, **kwargs)
        reads.append(gen.prefixes.last_read if gen._turn_prefixes else sum(map(len, prompts)))
        return out

    gen.generate_ids = counting
    return run_episodes(gen, hands, template, turns=turns), reads, gen


def test_greedy_multi_turn_answers_equal_whole_dialogue_generation(tiny):
    model, tok = tiny  # random weights: every attempt fails, so every hand plays all five turns
    hands = data.make_eval("ood", 12, 42, "compact")
    settings = GenerationSettings(max_new_tokens=12, batch_size=12)
    whole, whole_reads, _ = _play(model, tok, "compact", hands, settings, reuse=False)
    cached, cached_reads, gen = _play(model, tok, "compact", hands, settings, reuse=True)
    assert cached.equals(whole) and (whole["turns"] == 5).all()
    # the first turn reads every prompt; later turns read only what was added to each dialogue
    assert cached_reads[0] == whole_reads[0]
    assert sum(cached_reads[1:]) < 0.5 * sum(whole_reads[1:])
    assert gen.prefixes.enabled and gen.prefixes.reused > 0


def test_a_turn_of_several_batches_reads_whole_dialogues_and_keeps_nothing(tiny):
    """Memory stays bounded by the batch size: a turn larger than one batch keeps no cache."""
    model, tok = tiny
    hands = data.make_eval("ood", 12, 42, "compact")
    settings = GenerationSettings(max_new_tokens=12, batch_size=5)
    whole, whole_reads, _ = _play(model, tok, "compact", hands, settings, reuse=False)
    cached, cached_reads, gen = _play(model, tok, "compact", hands, settings, reuse=True)
    assert cached.equals(whole)
    assert gen.prefixes.reused == 0 and not gen.prefixes._current and not gen.prefixes._previous


def test_sampled_chat_template_answers_equal_whole_dialogue_generation(chat):
    model, tok = chat  # decoding "model": the checkpoint's sampling (T 0.7, top-p, top-k, repetition penalty)
    hands = data.make_eval("ood", 6, 42, "paper")
    settings = GenerationSettings(max_new_tokens=16, batch_size=6, decoding="model", seed=3)
    whole, _, _ = _play(model, tok, "paper", hands, settings, reuse=False, turns=3)
    cached, reads, gen = _play(model, tok, "paper", hands, settings, reuse=True, turns=3)
    assert cached.equals(whole) and gen.prefixes.enabled
    assert all(r < reads[0] for r in reads[1:])  # the long paper prompt is read once


def test_other_cache_kinds_fall_back_to_whole_dialogues(chat):
    _, tok = chat
    arch = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=1024, use_sliding_window=True,
                sliding_window=16, max_window_layers=0)  # fmt: skip
    model = _sensitive(build_model(tok, seed=0, arch=arch))  # sliding-window attention: sliding cache layers
    assert "sliding_attention" in model.config.layer_types
    hands = data.make_eval("ood", 4, 42, "paper")
    settings = GenerationSettings(max_new_tokens=8, batch_size=4)
    whole, _, _ = _play(model, tok, "paper", hands, settings, reuse=False, turns=2)
    cached, _, gen = _play(model, tok, "paper", hands, settings, reuse=True, turns=2)
    assert cached.equals(whole)
    assert not gen.prefixes.enabled and gen.prefixes.reused == 0


def test_a_rollout_after_an_update_never_reads_the_old_weights_cache(tiny):
    """PPO changes the weights between rollouts: the sampler must forget the old turns' keys and
    values. The same hands twice, weights changed in between, must give the rollout of a sampler
    that never saw the old weights."""
    model, tok = tiny
    hands = data.make_rl(4, 0, "compact")
    one = PPOConfig(turns=1, temperature=1.0, max_new_tokens=6, rollout_batch_size=4)
    sampler = Sampler(model, tok, "compact", one)
    play(sampler, hands, "compact", one)  # the cache now holds these prompts under the old weights
    old = {k: v.clone() for k, v in model.state_dict().items()}
    _sensitive(model, seed=1)
    try:
        torch.manual_seed(5)
        again = play(sampler, hands, "compact", one)
        fresh_sampler = Sampler(model, tok, "compact", one)
        torch.manual_seed(5)
        fresh = play(fresh_sampler, hands, "compact", one)
    finally:
        model.load_state_dict(old)
    assert [(c.tolist(), r.tolist()) for c, r in again.pairs] == [(c.tolist(), r.tolist()) for c, r in fresh.pairs]
