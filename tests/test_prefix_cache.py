"""Multi-turn generation continued from the previous turn's KV cache (sftrl.prefix_cache) gives the
answers of generation from the whole dialogue, reads fewer tokens, and is dropped when it must be."""

import dataclasses

import pytest
import torch

from sftrl import data
from sftrl.chatmodel import build_model, build_tokenizer, game_corpus
from sftrl.evaluate import GenerationSettings, Generator, run_episodes
from sftrl.game import check_formula
from sftrl.models import build_tiny_model, build_tiny_tokenizer
from sftrl.ppo import PPOConfig, Sampler, play
from sftrl.prefix_cache import PrefixCache, generate_rows

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


def _ends_at_turn():
    """The verifier, except that hand ``numbers`` counts as solved on attempt ``sum % 4 + 1``:
    episodes end at different turns, so each turn's batch is a subset of the previous one's."""
    attempts = {}

    def check(formula, numbers, arithmetic="exact"):
        key = tuple(numbers)
        attempts[key] = attempts.get(key, 0) + 1
        verdict = check_formula(formula, numbers, arithmetic=arithmetic)
        return dataclasses.replace(verdict, solved=attempts[key] == sum(numbers) % 4 + 1)

    return check


def test_episodes_ending_at_different_turns_continue_their_own_rows(tiny):
    model, tok = tiny
    hands = data.make_eval("ood", 12, 42, "compact")
    settings = GenerationSettings(max_new_tokens=12, batch_size=12)
    runs, gens = [], []
    for reuse in (False, True):
        gens.append(Generator(model, tok, "compact", settings, reuse_cache=reuse))
        runs.append(run_episodes(gens[-1], hands, "compact", turns=5, check=_ends_at_turn()))
    assert runs[1].equals(runs[0])
    assert len(set(runs[0]["turns"])) >= 3 and gens[1].prefixes.reused > 0


def test_multi_turn_rollouts_equal_whole_dialogue_rollouts(tiny):
    model, tok = tiny
    cfg = PPOConfig(turns=3, temperature=1.0, max_new_tokens=6, rollout_batch_size=8)
    hands = data.make_rl(8, 0, "compact")
    rollouts, samplers = [], []
    for reuse in (True, False):
        samplers.append(Sampler(model, tok, "compact", cfg))
        if not reuse:
            samplers[-1].generator.prefixes = None
        torch.manual_seed(7)
        rollouts.append(play(samplers[-1], hands, "compact", cfg, check=_ends_at_turn()))
    cached, whole = rollouts
    assert [(c.tolist(), r.tolist()) for c, r in cached.pairs] == [(c.tolist(), r.tolist()) for c, r in whole.pairs]
    assert cached.turn.max() == 2 and samplers[0].generator.prefixes.reused > 0
    assert not samplers[0].generator.prefixes._current  # forgotten after the rollout: the update needs no cache


def test_a_batch_mixing_continued_and_new_prompts(tiny):
    model, tok = tiny
    gen = Generator(model, tok, "compact", GenerationSettings(max_new_tokens=6, batch_size=4))
    p = gen.encode(list(data.make_eval("ood", 3, 42, "compact")["prompt"]))
    cache = PrefixCache()
    cache.next_turn()
    first = generate_rows(model, [p[0], p[1]], tok.pad_token_id, cache, **gen.generate_kwargs)
    cache.next_turn()
    second = [p[0] + first[0, :3].tolist() + p[1][:4], p[2]]  # continues row 0; a prompt never seen
    cached = generate_rows(model, second, tok.pad_token_id, cache, **gen.generate_kwargs)
    whole = generate_rows(model, second, tok.pad_token_id, None, **gen.generate_kwargs)
    assert torch.equal(cached, whole)
    assert cache.reused == len(p[0]) + 3 and cache.last_read == 4 + len(p[2])


def test_processors_see_the_ids_of_a_whole_prefill(chat, monkeypatch):
    """A repetition penalty reads the input ids: each row must hold the same set of ids (padding
    or not) as when its dialogue is read whole, though the cache lays the rows out differently."""
    model, tok = chat
    gen = Generator(model, tok, "paper", GenerationSettings(max_new_tokens=8, batch_size=2, decoding="model"))
    prompts = [gen.render([{"role": "user", "content": q}]) for q in data.make_eval("ood", 2, 42, "paper")["prompt"]]
    p = gen.encode(prompts[:2])
    short, long = p[0], p[1] + p[1][-4:]  # prompts of different lengths
    seen = []
    real = model.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["input_ids"].clone())
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", recording)
    cache = PrefixCache()
    cache.next_turn()
    first = generate_rows(model, [short, long], tok.pad_token_id, cache, **gen.generate_kwargs)
    cache.next_turn()
    # the short dialogue gets a long feedback and becomes the longest prompt, yet the long one has
    # more cached tokens: the longest row has masked slots, which a whole prefill would not pad
    second = [short + first[0, :2].tolist() + long[-30:], long + first[1, :2].tolist() + long[-3:]]
    generate_rows(model, second, tok.pad_token_id, cache, **gen.generate_kwargs)
    generate_rows(model, second, tok.pad_token_id, None, **gen.generate_kwargs)
    cached_ids, whole_ids = seen[1], seen[2]
    assert cache.reused > 0 and cached_ids.shape[1] > whole_ids.shape[1]
    assert [set(row.tolist()) for row in cached_ids] == [set(row.tolist()) for row in whole_ids]


def test_half_precision_and_cross_attention_models_read_every_turn_whole(tiny):
    from transformers import MllamaForCausalLM, MllamaTextConfig

    model, tok = tiny
    hands = data.make_eval("ood", 4, 42, "compact")
    settings = GenerationSettings(max_new_tokens=6, batch_size=4)
    bf16 = build_tiny_model(ARCH, tok, 0).to(torch.bfloat16)
    config = MllamaTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=2, cross_attention_layers=[1],
                              max_position_embeddings=192, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)  # fmt: skip
    torch.manual_seed(0)
    mllama = _sensitive(MllamaForCausalLM(config))  # Llama-3.2-Vision's text model: cross-attention layers
    for m in (bf16, mllama):
        whole, _, _ = _play(m, tok, "compact", hands, settings, reuse=False, turns=3)
        cached, _, gen = _play(m, tok, "compact", hands, settings, reuse=True, turns=3)
        assert cached.equals(whole)
        assert not gen.prefixes.enabled and gen.prefixes.reused == 0, type(m).__name__
