"""Prefix reuse for the transformers backend: prompts of one call that share a head run it once,
and (the mixin) the cross-call prefix cache's side of :class:`~azgym.lm.hf.HFBackend`: run each prompt
after its longest cached prefix, put what ran in the cache, drop it when the weights change.

Also the token counters and timers every backend call updates.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from dataclasses import dataclass, fields

import torch

from azgym.lm.prefix_cache import LastHidden, PrefixCache, common_prefix, past_from, row_kv, weights_fingerprint

SHARED_HEAD_TOKENS = 16  # prompts of one call sharing at least this many leading tokens prefill them once


def shared_heads(prompts: list[list[int]], min_shared: int) -> tuple[list[int], list[list[int]]] | None:
    """Group prompts by a shared head: (group of each prompt, the head of each group), or None
    when no two prompts share ``min_shared`` leading tokens. A head stops one token short of its
    shortest member, so every prompt keeps a tail to run."""
    if len(prompts) < 2 or min(len(p) for p in prompts) < 2:
        return None
    order = sorted(range(len(prompts)), key=lambda i: prompts[i])
    group_of, heads = [0] * len(prompts), []
    start = 0
    for k in range(1, len(order) + 1):
        if k < len(order):
            a, b = prompts[order[start]], prompts[order[k]]
            common = common_prefix(a, b)
            if common >= min_shared:
                continue
        members = order[start:k]
        shared = min(common_prefix(prompts[members[0]], prompts[m]) for m in members)
        shortest = min(len(prompts[m]) for m in members)
        for m in members:
            group_of[m] = len(heads)
        heads.append(prompts[members[0]][: max(1, min(shared if len(members) > 1 else shortest, shortest - 1))])
        start = k
    if len(heads) == len(prompts):
        return None
    return group_of, heads


def cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers 5.x) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(output):
    """The KV cache a forward pass returned, under either transformers name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


@dataclass
class TokenStats:
    """Tokens run through the model since the last reset: prompt prefill, decoding steps (one per
    live row and step), sampled tokens kept, continuation tokens scored on top of a prefix, tokens run
    for hidden states (values), and prompt tokens taken from the prefix cache instead of run; and the
    seconds spent in ``generate``, ``score`` and ``last_hidden``."""

    prefill: int = 0
    generated: int = 0
    sampled: int = 0
    scored: int = 0
    valued: int = 0
    reused: int = 0
    generate_rows: int = 0  # rows (prompt x sample) asked of generate
    generate_calls: int = 0
    generate_s: float = 0.0
    score_s: float = 0.0
    value_s: float = 0.0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, f.default)


@contextlib.contextmanager
def timed(stats: TokenStats, name: str):
    """Add the seconds the block takes to ``stats.<name>``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        setattr(stats, name, getattr(stats, name) + time.perf_counter() - start)


class PrefixCacheMixin:
    """The cross-call prefix cache's methods of a transformers backend (see :mod:`azgym.lm.hf`)."""

    model: torch.nn.Module
    prefix_cache: PrefixCache | None
    stats: TokenStats
    _fingerprint: int
    _cache_arg: str

    def clear_prefix_cache(self) -> None:
        """Drop every cached prefix (done by itself when a parameter changes)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()

    def _check_weights(self) -> None:
        fingerprint = weights_fingerprint(self.model)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.clear_prefix_cache()

    def _run_cached(self, prompts: list[list[int]], counter: str = "prefill"):
        """Run each prompt after its longest cached prefix (at least its last token runs) and cache it.

        Returns the KV cache, the last position's logits, the attention mask, the last position id and
        the final hidden state at the last position, one row per prompt (None for no prompts).
        """
        if not prompts:
            return None
        device, tree = self.device, self.prefix_cache
        matched = [tree.match_pieces(p, len(p) - 1) for p in prompts]
        lengths = [m for m, _ in matched]
        ids, tail_mask = self.left_pad([p[m:] for p, m in zip(prompts, lengths, strict=True)])
        ids, tail_mask = ids.to(device), tail_mask.to(device)
        self.stats.reused += sum(lengths)
        setattr(self.stats, counter, getattr(self.stats, counter) + int(tail_mask.sum()))
        start = torch.tensor(lengths, device=device).unsqueeze(1)
        position = (start + tail_mask.cumsum(-1) - 1).clamp(min=0)  # cached keys sit at positions 0..m-1
        mask, past = tail_mask, {}
        if any(lengths):
            cache, past_mask = past_from([pieces for _, pieces in matched], self.model.config)
            mask, past = torch.cat([past_mask, tail_mask], dim=1), {self._cache_arg: cache}
        with LastHidden(self.model) as hidden:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, **past)
        cache = cache_of(out)
        self._remember(prompts, cache, mask, hidden.value)
        return cache, out.logits[:, -1, :].float(), mask, position[:, -1:], hidden.value[:, -1, :]

    def _remember(self, sequences, cache, mask: torch.Tensor, hidden: torch.Tensor | None = None, rows=None) -> None:
        """Put each sequence in the prefix cache: batch row ``rows[i]`` (default ``i``) holds its keys and
        values at the columns where ``mask`` is 1; ``hidden`` [B, F, hidden] covers the last F columns."""
        first = mask.shape[1] - (hidden.shape[1] if hidden is not None else 0)
        for i, seq in enumerate(sequences):
            row = i if rows is None else rows[i]
            columns = mask[row].nonzero().squeeze(-1)
            seq = list(seq)[: len(columns)]  # a sample's last token was sampled, never run

            def kv_fn(a, b, row=row, columns=columns):
                return row_kv(cache, row, columns[a:b])

            def hidden_fn(a, b, row=row, columns=columns):
                span = columns[a:b]
                return hidden[row, span - first] if int(span[0]) >= first else None

            self.prefix_cache.insert(seq, kv_fn, hidden_fn if hidden is not None else None)

    def _hidden_of(self, sequences: list[list[int]]) -> torch.Tensor:
        if self.prefix_cache is not None:
            return self._run_cached(sequences, counter="valued")[4]
        ids, mask = self.left_pad(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.stats.valued += int(mask.sum())
        with LastHidden(self.model) as hidden:
            self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
        return hidden.value[:, -1, :]
