"""Multi-turn generation without re-reading the dialogue: the KV cache of one turn continues the next.

An episode of the study is a dialogue of up to five attempts; each turn's prompt is the previous
turn's prompt, the model's answer and the verifier's feedback. Generating each turn from its whole
prompt re-reads ("prefills") everything before it: in a 5-turn evaluation of the tiny model that
prefill is most of the work. A :class:`PrefixCache` keeps the keys and values a batched ``generate``
computed for each row (prompt and answer) and starts the next turn's row from the longest prefix
of its token ids that it holds, so only the new tokens (the feedback, or whatever differs) are read.

It is a cache, not an approximation: the keys and values of a token depend only on the tokens
before it and their positions, so a row continued from the cache is the same computation as one
prefilled whole, up to floating-point rounding (the cached values come from the decoding steps
that produced them; tests/test_evaluate.py checks that greedy answers agree). The match is made on
token ids, never on text, so an answer that re-tokenises differently after decoding, or a chat
template that rewrites earlier turns, simply matches less.

Rules of use: a turn is one batch (``sftrl.evaluate.Generator`` keeps the cache only when a turn's
dialogues fit in one batch, so the run-only batch size still bounds memory: while a batch is
generated it holds the previous turn's cache and its own); the cache must be cleared (``clear``)
whenever the weights change, e.g. before each PPO rollout. Only caches made of plain
``DynamicLayer`` layers are reused (decoder-only models with full attention: Llama, Qwen2, the tiny
model); any other cache type (sliding windows, cross attention, quantised caches) turns reuse off
and every turn is prefilled whole, as without it.
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

    def release(self) -> None:
        """Drop the previous turn's rows (once its one batch has taken what it needs)."""
        self._previous, self._lengths = {}, []

    def match(self, prompt: list[int]) -> tuple[_Batch, int, int] | None:
        """``(batch, row, n)``: the stored row sharing the longest prefix with ``prompt`` (found
        through the row's own prompt, a prefix of ``prompt``) and the ``n`` tokens it can supply,
        at most ``len(prompt) - 1`` (generation must read at least one token); None if none."""
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
        if type(cache) is not DynamicCache or not layers or any(type(layer) is not DynamicLayer for layer in layers):
            self.enabled = False  # a cache of another kind: prefill every turn whole
            self.clear()
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
    hits = [cache.match(p) for p in prompts] if cache is not None and cache.enabled else [None] * len(prompts)
    cached = [h[2] if h else 0 for h in hits]
    width = max(cached)
    fresh = max(len(p) - n for p, n in zip(prompts, cached, strict=True))
    device = model.device
    ids = torch.full((len(prompts), width + fresh), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for j, (p, n) in enumerate(zip(prompts, cached, strict=True)):
        # the cached part right-aligned before `width`, the part to read right-aligned at the end
        ids[j, width - n : width] = torch.tensor(p[:n], dtype=torch.long)
        ids[j, ids.shape[1] - (len(p) - n) :] = torch.tensor(p[n:], dtype=torch.long)
        mask[j, width - n : width] = 1
        mask[j, ids.shape[1] - (len(p) - n) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    if cache is not None:
        cache.last_read = sum(len(p) for p in prompts) - sum(cached)
        cache.read, cache.reused = cache.read + cache.last_read, cache.reused + sum(cached)
    extra = {"cache": cache.past(hits, width)} if width else {}
    if cache is not None:
        cache.release()  # the previous turn's tensors: copied into this batch's cache, freed now
    if cache is None or not cache.enabled:
        return model.generate(input_ids=ids, attention_mask=mask, **kwargs)[:, ids.shape[1] :]
    out = model.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **extra, **kwargs)
    sequences = out.sequences
    full_mask = torch.cat([mask, mask.new_ones((mask.shape[0], sequences.shape[1] - mask.shape[1]))], dim=1)
    cache.store(prompts, sequences, full_mask, out.cache)
    return sequences[:, ids.shape[1] :]
