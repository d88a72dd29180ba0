"""Multi-turn generation without re-reading the dialogue: the KV cache of one turn continues the next.

An episode of the study is a dialogue of up to five attempts; each turn's prompt is the previous
turn's prompt, the model's answer and the verifier's feedback. Generating each turn from its whole
prompt re-reads ("prefills") everything before it: in a 5-turn evaluation of the tiny model that
prefill is most of the work. A :class:`PrefixCache` keeps the keys and values a batched ``generate``
computed for each row (prompt and answer). A row of the next turn whose prompt extends a stored
row's prompt starts from the tokens the two share (its earlier turns, as token ids), so only the
new tokens (the feedback, or whatever differs) are read.

It is a cache, not an approximation: the keys and values of a token depend only on the tokens
before it and their positions, so a row continued from the cache is the same computation as one
prefilled whole, up to floating-point rounding (the cached values come from the decoding steps
that produced them; tests/test_prefix_cache.py checks that greedy and sampled answers agree).
The match is made on token ids, never on text: an answer that re-tokenises differently after
decoding reuses less, and a template that rewrites earlier turns (so that the previous prompt is
no longer a prefix) reuses nothing. Logits processors that read the input ids (a repetition
penalty) see the ids a whole prefill would: masked slots repeat a token of the row, or are padding
where the row would have been padded.

When it is used (anything else prefills every turn whole, as without it):

* a turn is one batch: ``sftrl.evaluate.Generator`` keeps the cache only when a turn's dialogues
  fit in one batch, so the run-only batch size still bounds memory: one batch's cache is kept
  between turns, copied once into the next turn's batch, then freed;
* float32 caches only: in bf16/fp16 a value computed while decoding and the same value computed
  in a prefill differ by a coarse rounding that could flip a near-tie; on the GPU the prefill is
  cheap anyway;
* plain ``DynamicLayer`` layers whose keys all have one length (decoder-only models with full
  attention: Llama, Qwen2, the tiny model); sliding windows, Llama-3.2-Vision's cross-attention
  layers and quantised caches turn reuse off;
* one sequence per prompt (no beam search, no ``num_return_sequences``).

The cache must be cleared (``clear``) before the weights change, e.g. after each PPO rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Batch:
    """One generated batch: its cache tensors and, per row, the positions and ids of its tokens."""

    keys: list[torch.Tensor]  # per layer (B, heads, T, head_dim)
    values: list[torch.Tensor]
    positions: list[torch.Tensor]  # per row: cache positions of its tokens (padding left out)
    tokens: list[list[int]]  # per row: the ids at those positions


class PrefixCache:
    """The KV cache of the previous turn, looked up by token prefix (see the module docstring)."""

    def __init__(self) -> None:
        self.enabled = True
        self.last_read = 0  # tokens the last batch gave the model to read (its cached ones not counted)
        self.read = self.reused = 0  # tokens read and tokens taken from the cache, over every batch
        self.clear()

    def clear(self) -> None:
        """Forget every row (call it whenever the model's weights change)."""
        self._previous: dict[tuple[int, ...], tuple[_Batch, int]] = {}
        self._lengths: list[int] = []
        self._current: dict[tuple[int, ...], tuple[_Batch, int]] = {}

    def next_turn(self) -> None:
        """Rows stored from now on are matched from the next turn; the older ones are dropped."""
        self._previous, self._current = self._current, {}
        self._lengths = sorted({len(k) for k in self._previous}, reverse=True)

    def disable(self) -> None:
        """Stop reusing for good (a cache or a generation it cannot continue): every turn is read whole."""
        self.enabled = False
        self.clear()

    def release(self) -> None:
        """Drop the previous turn's rows (once its one batch has taken what it needs)."""
        self._previous, self._lengths = {}, []

    def match(self, prompt: list[int]) -> tuple[_Batch, int, int] | None:
        """``(batch, row, n)``: the stored row whose prompt ``prompt`` extends (the longest such)
        and the ``n`` leading tokens the two share, which the row can supply, at most
        ``len(prompt) - 1`` (generation must read at least one token); None if none."""
        for length in self._lengths:
            if length > len(prompt):
                continue
            hit = self._previous.get(tuple(prompt[:length]))
            if hit is None:
                continue
            batch, row = hit
            cached = batch.tokens[row]
            n = 0
            limit = min(len(cached), len(prompt) - 1)
            while n < limit and cached[n] == prompt[n]:
                n += 1
            return (batch, row, n) if n else None
        return None

    def past(self, hits: list[tuple[_Batch, int, int] | None], width: int):
        """A ``DynamicCache`` of ``width`` positions for a new batch: row ``j`` holds its hit's
        ``n`` cached positions right-aligned (left of them: zeros, masked by the caller)."""
        from transformers import DynamicCache

        first = next(h for h in hits if h is not None)[0]
        data = []
        for layer in range(len(first.keys)):
            k0, v0 = first.keys[layer], first.values[layer]
            keys = k0.new_zeros((len(hits), k0.shape[1], width, k0.shape[3]))
            values = v0.new_zeros((len(hits), v0.shape[1], width, v0.shape[3]))
            for j, hit in enumerate(hits):
                if hit is None:
                    continue
                batch, row, n = hit
                pos = batch.positions[row][:n]
                keys[j, :, width - n :] = batch.keys[layer][row].index_select(1, pos)
                values[j, :, width - n :] = batch.values[layer][row].index_select(1, pos)
            data.append((keys, values))
        return DynamicCache(ddp_cache_data=data)

    def store(self, prompts: list[list[int]], sequences: torch.Tensor, mask: torch.Tensor, cache) -> None:
        """Keep a generated batch: ``sequences`` (B, T) as ``generate`` returned them, ``mask`` the
        attention mask of its input extended by ones over the generated tokens, ``cache`` the cache
        it returned (positions ``0 .. T-2``: the last token was never read)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        layers = getattr(cache, "layers", None)
        plain = (
            type(cache) is DynamicCache
            and layers
            and all(type(layer) is DynamicLayer and getattr(layer, "keys", None) is not None for layer in layers)
        )
        # another kind of cache (cross-attention layers hold no keys), or half precision (see the
        # module docstring): every turn from now on is read whole
        if not plain or {(layer.keys.shape[2], layer.keys.dtype) for layer in layers} != {
            (layers[0].keys.shape[2], torch.float32)
        }:
            self.disable()
            return
        length = layers[0].keys.shape[2]
        batch = _Batch(keys=[layer.keys for layer in layers], values=[layer.values for layer in layers],
                       positions=[], tokens=[])  # fmt: skip
        for row in range(sequences.shape[0]):
            pos = mask[row, :length].nonzero().squeeze(1)
            batch.positions.append(pos.to(batch.keys[0].device))
            batch.tokens.append(sequences[row, pos.to(sequences.device)].tolist())
            self._current[tuple(prompts[row])] = (batch, row)


def generate_rows(model, prompts: list[list[int]], pad_id: int, cache: PrefixCache | None, **kwargs) -> torch.Tensor:
    """``model.generate`` for one batch of prompts (token id lists, no padding); the new tokens
    (B, new), padding after an end of sequence included, as ``generate`` returns them. With a
    ``cache`` each row starts from the longest prefix the cache holds and the batch is stored."""
    gc = model.generation_config
    beams = kwargs.get("num_beams", gc.num_beams) or 1
    if cache is not None and (beams > 1 or (kwargs.get("num_return_sequences", gc.num_return_sequences) or 1) > 1):
        cache.disable()  # several sequences per prompt: rows would not line up
    if cache is not None and not cache.enabled:
        cache = None
    hits = [cache.match(p) for p in prompts] if cache is not None else [None] * len(prompts)
    cached = [h[2] if h else 0 for h in hits]
    width = max(cached)
    fresh = max(len(p) - n for p, n in zip(prompts, cached, strict=True))
    longest = max(map(len, prompts))
    ids = torch.full((len(prompts), width + fresh), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, (p, n) in enumerate(zip(prompts, cached, strict=True)):
        # the cached part right-aligned before `width`, the part to read right-aligned at the end;
        # masked slots hold padding only where a whole prefill pads this row (it is shorter than
        # the longest prompt), else its first token: processors that read the ids (a repetition
        # penalty) see the same set of ids as in a whole prefill
        if len(p) == longest:
            ids[j] = p[0]
        for part, tokens in ((slice(width - n, width), p[:n]), (slice(ids.shape[1] - (len(p) - n), None), p[n:])):
            ids[j, part] = torch.tensor(tokens, dtype=torch.long)
            mask[j, part] = 1
    device = model.device
    ids, mask = ids.to(device), mask.to(device)
    if cache is None:
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
    cache.last_read = sum(len(p) for p in prompts) - sum(cached)
    cache.read, cache.reused = cache.read + cache.last_read, cache.reused + sum(cached)
    extra = {"cache": cache.past(hits, width)} if width else {}
    del hits  # with the cache's own references (release), the last ones to the previous turn's rows:
    cache.release()  # copied into this batch's cache, they are freed before it generates
    out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **extra, **kwargs)
    sequences = out.sequences
    full_mask = torch.cat([mask, mask.new_ones((mask.shape[0], sequences.shape[1] - mask.shape[1]))], dim=1)
    cache.store(prompts, sequences, full_mask, out.cache)
    return sequences[:, ids.shape[1] :]
