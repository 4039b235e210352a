"""Prefix reuse for the transformers backend: prompts of one call that share a head run it once,
and (the mixin) the cross-call prefix cache's side of :class:`~azgym.lm.hf.HFBackend`: run each prompt
after its longest cached prefix, put what ran in the cache, drop it when the weights change, and score
continuations in one pass per batch of similar lengths on top of their cached prompts.

Also the token counters and timers every backend call updates.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch

from azgym.lm.decode import StepCache
from azgym.lm.precision import InferenceCopy
from azgym.lm.prefix_cache import (
    LastHidden,
    PrefixCache,
    common_prefix,
    dynamic_cache,
    past_tensor,
    row_kv,
    stack_batches,
    weights_fingerprint,
)

SHARED_HEAD_TOKENS = 16  # prompts of one call sharing at least this many leading tokens prefill them once
# a forward pass's fixed cost (its weights are read whatever the batch) in positions' worth of compute: on a
# CPU a pass costs ~60 ms + ~1.9 ms a position (SmolLM2-135M, one core), so ~32; on an accelerator thousands
PASS_COST_TOKENS = {"cpu": 32}
PASS_COST_TOKENS_ACCELERATOR = 4096
SCORE_MEMO_ENTRIES = 4096  # scored (prompt, continuation) pairs remembered with the prefix cache (~4 KB each)


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


def logits_keyword(model) -> str | None:
    """The keyword that limits a model's logits to the last positions (``logits_to_keep``, formerly
    ``num_logits_to_keep``), or None where its forward takes neither (it returns every position's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(base.forward).parameters
    return next((k for k in ("logits_to_keep", "num_logits_to_keep") if k in parameters), None)


def length_buckets(lengths: Sequence[int], max_rows: int, pass_tokens: int) -> list[list[int]]:
    """Rows split into batches of similar length, as lists of row indices (shortest rows first): the split
    of least cost, a batch costing its padded positions (rows x its longest row) plus ``pass_tokens``, at
    most ``max_rows`` rows in a batch (dynamic programming over the rows sorted by length).

    >>> length_buckets([16, 2, 16, 3, 16], max_rows=32, pass_tokens=16)
    [[1, 3], [0, 2, 4]]
    >>> length_buckets([2, 16, 3], max_rows=32, pass_tokens=32)
    [[0, 2, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)  # best[j]: cost of the j shortest rows
    for j in range(1, len(order) + 1):
        for i in range(max(0, j - max_rows), j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + pass_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i
    buckets, j = [], len(order)
    while j:
        buckets.append(order[cut[j] : j])
        j = cut[j]
    return buckets[::-1]


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


class Ran(NamedTuple):
    """What :meth:`PrefixCacheMixin._run_cached` ran: the batch KV cache, the logits of the last ``keep``
    positions ``[B, keep, V]`` (float32), the attention mask, the last position id ``[B, 1]``, the final
    hidden state of every position run ``[B, T, hidden]`` and the cached prefix length of each row."""

    cache: object
    logits: torch.Tensor
    mask: torch.Tensor
    position: torch.Tensor
    hidden: torch.Tensor
    matched: list[int]


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
    runner: torch.nn.Module
    _copy: InferenceCopy | None
    prefix_cache: PrefixCache | None
    stats: TokenStats
    _fingerprint: int
    _cache_arg: str
    _logits_arg: str | None
    _scored: dict[tuple[tuple[int, ...], tuple[int, ...]], np.ndarray]
    max_batch_size: int

    def clear_prefix_cache(self) -> None:
        """Drop every cached prefix (done by itself when a parameter changes)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        self._scored.clear()

    def _check_weights(self) -> None:
        fingerprint = weights_fingerprint(self.model)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            self.clear_prefix_cache()
            if self._copy is not None:
                self._copy.refresh()
                if self._lean is not None:  # it holds copies of the old weights: rebuilt when next needed
                    self._lean = False

    def _run_cached(
        self,
        sequences: list[list[int]],
        counter: str | None = "prefill",
        *,
        limits: Sequence[int] | None = None,
        keep: int = 1,
        room: int = 0,
    ) -> Ran | None:
        """Run each sequence after its longest cached prefix within ``limits`` (default: all but its last
        token, so at least that token runs) and cache it. ``keep``: positions whose logits are computed,
        counted from the end (left padding puts every row's last token in the last column). ``counter``:
        the stat the tokens run are added to (None: the caller counts them). ``room``: columns the lean
        decoder's cache keeps free after these, for decoding on from them.
        """
        if not sequences:
            return None
        device, tree = self.device, self.prefix_cache
        limits = [len(s) - 1 for s in sequences] if limits is None else limits
        matched = [tree.match_pieces(s, limit) for s, limit in zip(sequences, limits, strict=True)]
        lengths = [m for m, _ in matched]
        ids, tail_mask = self.left_pad([s[m:] for s, m in zip(sequences, lengths, strict=True)])
        ids, tail_mask = ids.to(device), tail_mask.to(device)
        self.stats.reused += sum(lengths)
        if counter is not None:
            setattr(self.stats, counter, getattr(self.stats, counter) + int(tail_mask.sum()))
        start = torch.tensor(lengths, device=device).unsqueeze(1)
        position = (start + tail_mask.cumsum(-1) - 1).clamp(min=0)  # cached keys sit at positions 0..m-1
        decoder = self._decoder()
        mask, past = tail_mask, None
        if any(lengths):  # the cached prefixes; for the lean decoder with room for the new columns and beyond
            past, past_mask = past_tensor(
                [p for _, p in matched], room=ids.shape[1] + room if decoder is not None else 0
            )
            mask = torch.cat([past_mask, tail_mask], dim=1)
        if decoder is not None:
            if past is None:
                cache = decoder.empty_cache(len(sequences), ids.shape[1] + room)
            else:
                cache = StepCache(past, mask.shape[1] - ids.shape[1])
            logits, hidden = decoder.run(cache, ids, mask, position, keep)
        else:
            cached = {} if past is None else {self._cache_arg: dynamic_cache(past, self.model.config)}
            with LastHidden(self.runner) as last:
                out = self.runner(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position,
                    use_cache=True,
                    **cached,
                    **self._logits_kept(keep),
                )
            cache, logits, hidden = cache_of(out), out.logits[:, -keep:].float(), last.value
        self._remember(sequences, cache, mask, hidden)
        return Ran(cache, logits, mask, position[:, -1:], hidden, lengths)

    def _prefill_cached(self, prompts: list[list[int]], room: int = 0):
        """Run prompts to sample from (after their longest cached prefixes), rows of similar lengths in one
        pass each, stacked back into one batch: the KV cache, the last position's logits, the mask and the
        last position id, one row per prompt in order."""
        self._run_shared_heads(prompts)
        tree = self.prefix_cache
        lengths = [len(p) - tree.match_pieces(p, len(p) - 1)[0] for p in prompts]
        buckets = length_buckets(lengths, len(prompts), self._pass_tokens())
        if len(buckets) == 1:
            ran = self._run_cached(prompts, room=room)
            return ran.cache, ran.logits[:, -1], ran.mask, ran.position
        runs = [self._run_cached([prompts[i] for i in bucket]) for bucket in buckets]
        device = runs[0].logits.device
        rows = [torch.tensor(bucket, device=device) for bucket in buckets]
        cache, mask = stack_batches([(r.cache, r.mask, b) for r, b in zip(runs, rows, strict=True)], self.model.config)
        order = torch.cat(rows).argsort()  # row of the concatenated runs that holds each prompt
        logits = torch.cat([r.logits[:, -1] for r in runs])[order]
        position = torch.cat([r.position for r in runs])[order]
        return cache, logits, mask, position

    def _pass_tokens(self) -> int:
        return PASS_COST_TOKENS.get(self.device.type, PASS_COST_TOKENS_ACCELERATOR)

    def _logits_kept(self, keep: int) -> dict:
        return {self._logits_arg: keep} if self._logits_arg else {}

    def _run_shared_heads(self, prompts: list[list[int]]) -> None:
        """Cache, once, the heads (instructions and question) several of ``prompts`` share and the cache lacks."""
        groups = shared_heads(prompts, SHARED_HEAD_TOKENS)
        if groups is not None:
            group_of, heads = groups
            shared = [h for g, h in enumerate(heads) if group_of.count(g) > 1]
            self._run_cached([h for h in shared if self.prefix_cache.match_pieces(h)[0] < len(h)])

    def _score_cached(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Log-probs of each continuation given its prompt (see :meth:`_run_scoring`); a pair scored before
        since the weights last changed, or twice in this call, runs once."""
        keys = [(tuple(p), tuple(c)) for p, c in pairs]
        todo = {k: pair for k, pair in zip(keys, pairs, strict=True) if k not in self._scored}
        if len(self._scored) + len(todo) > SCORE_MEMO_ENTRIES:
            self._scored.clear()
        found = dict(zip(todo, self._run_scoring(list(todo.values())), strict=True))
        self._scored.update(found)
        return [(found[k] if k in found else self._scored[k]).copy() for k in keys]

    def _run_scoring(self, pairs: list[tuple[list[int], list[int]]]) -> list[np.ndarray]:
        """Each row runs its prompt's last token and the continuation on top of the cached rest of the
        prompt, in one forward pass per batch of rows of similar lengths; prompt + continuation (a child
        state) is cached whole, hidden states included, and so is the prompt's last token's (the parent's
        value). What a prompt lacks before its last token runs first, once per distinct prompt."""
        tree = self.prefix_cache
        todo = list(dict.fromkeys(tuple(p[:-1]) for p, _ in pairs if tree.match_pieces(p, len(p) - 1)[0] < len(p) - 1))
        for start in range(0, len(todo), self.max_batch_size):
            chunk = [list(t) for t in todo[start : start + self.max_batch_size]]
            self._run_shared_heads(chunk)
            self._run_cached(chunk)
        lengths = [len(p) - tree.match_pieces(p, len(p) - 1)[0] + len(c) for p, c in pairs]
        result: list[np.ndarray] = [np.zeros(0, np.float32)] * len(pairs)
        for bucket in length_buckets(lengths, self.max_batch_size, self._pass_tokens()):
            rows = [pairs[i] for i in bucket]
            keep = max(len(c) for _, c in rows) + 1
            ran = self._run_cached([p + c for p, c in rows], None, limits=[len(p) - 1 for p, _ in rows], keep=keep)
            self.stats.prefill += sum(len(p) - m for (p, _), m in zip(rows, ran.matched, strict=True))
            self.stats.scored += sum(len(c) for _, c in rows)
            # the kept logits end at each row's last token: position keep - 1 - len(c) + t predicts c[t]
            row_of = [r for r, (_, c) in enumerate(rows) for _ in c]
            column = [keep - 1 - len(c) + t for _, c in rows for t in range(len(c))]
            if not row_of:
                continue
            device = ran.logits.device
            picked = ran.logits[torch.tensor(row_of, device=device), torch.tensor(column, device=device)]
            targets = torch.tensor([t for _, c in rows for t in c], device=device).unsqueeze(-1)
            log_p = torch.log_softmax(picked, dim=-1).gather(-1, targets).squeeze(-1).cpu().numpy()
            ends = np.cumsum([len(c) for _, c in rows])
            for i, piece in zip(bucket, np.split(log_p, ends[:-1]), strict=True):
                result[i] = piece.astype(np.float32)
        return result

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
            return self._run_cached(sequences, counter="valued").hidden[:, -1, :]
        ids, mask = self.left_pad(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.stats.valued += int(mask.sum())
        with LastHidden(self.runner) as hidden:
            self.runner(
                input_ids=ids,
                attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                **self._logits_kept(1),
            )
        return hidden.value[:, -1, :]
