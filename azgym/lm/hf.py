"""transformers backend: batched sampling with a KV cache and batched scoring, CPU or GPU.

The sampling loop is written out here rather than delegated to ``model.generate`` for three
reasons the environment depends on: per-sample seeded generators (a sample does not change when
the batch around it does), per-prompt temperatures and token budgets in one batch, and the
log-prob of every sampled token.

Prefix reuse (on by default): rows of one call that share a prompt (the K candidates of a state,
``n`` samples of a prompt) run that prompt through the model once and copy its KV cache, and
scoring runs each distinct prompt once and its continuations on top of the cached prefix. Rows
that finish early leave the batch, so a long sample does not keep finished rows computing.
``stats`` counts the tokens each call prefilled, generated and scored.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from azgym.lm.base import Generation, Prompt, TokenizerMixin

logger = logging.getLogger(__name__)


SHARED_HEAD_TOKENS = 16  # prompts of one call sharing at least this many leading tokens prefill them once


def _shared_heads(prompts: list[list[int]], min_shared: int) -> tuple[list[int], list[list[int]]] | None:
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
            common = _common_prefix(a, b)
            if common >= min_shared:
                continue
        members = order[start:k]
        shared = min(_common_prefix(prompts[members[0]], prompts[m]) for m in members)
        shortest = min(len(prompts[m]) for m in members)
        for m in members:
            group_of[m] = len(heads)
        heads.append(prompts[members[0]][: max(1, min(shared if len(members) > 1 else shortest, shortest - 1))])
        start = k
    if len(heads) == len(prompts):
        return None
    return group_of, heads


@contextlib.contextmanager
def module_mode(module: torch.nn.Module, training: bool):
    """``module`` in train (``training=True``) or eval mode inside the block, its previous mode
    restored after: the code that needs a mode switches it, nothing is left for a caller to remember."""
    was_training = module.training
    module.train(training)
    try:
        yield module
    finally:
        module.train(was_training)


def eval_mode(module: torch.nn.Module):
    """``module`` in eval mode (dropout off) inside the block; see :func:`module_mode`."""
    return module_mode(module, False)


def inference(method):
    """A backend method run without gradients and with its model in eval mode, whatever mode a
    learner left the shared weights in."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with torch.inference_mode(), eval_mode(self.model):
            return method(self, *args, **kwargs)

    return wrapper


def _cache_argument(model) -> str:
    """The keyword a model's forward takes its KV cache by: ``cache`` (transformers 5.x) or ``past_key_values``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _cache_of(output):
    """The KV cache a forward pass returned, under either transformers name."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class TokenStats:
    """Tokens run through the model since the last reset: prompt prefill, decoding steps (one per
    live row and step), sampled tokens kept, and continuation tokens scored on top of a prefix."""

    prefill: int = 0
    generated: int = 0
    sampled: int = 0
    scored: int = 0
    generate_rows: int = 0  # rows (prompt x sample) asked of generate
    generate_calls: int = 0

    def reset(self) -> None:
        self.prefill = self.generated = self.sampled = self.scored = self.generate_rows = self.generate_calls = 0


class HFBackend(TokenizerMixin):
    """A transformers causal LM behind the :class:`~azgym.lm.base.LanguageModel` protocol.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device.
        tokenizer: its tokenizer.
        name: a label for logs.
        max_batch_size: rows per forward pass; larger calls are split.
        prefix_reuse: prefill a prompt shared by several rows once (see the module docs).
    """

    def __init__(self, model, tokenizer, *, name: str = "model", max_batch_size: int = 32, prefix_reuse: bool = True):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.prefix_reuse = prefix_reuse
        self.stats = TokenStats()
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        if not self.eos_ids:
            raise ValueError(f"{name}: neither the model nor the tokenizer defines an end-of-sequence token")
        self.eos_token_id = int(tokenizer.eos_token_id if tokenizer.eos_token_id in self.eos_ids else min(self.eos_ids))
        self._cache_arg = _cache_argument(model)

    @classmethod
    def from_name(cls, name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs) -> HFBackend:
        """Load by short name (e.g. ``smollm2-135m-instruct``), local path or Hub id."""
        from azgym.lm.registry import load_model

        model, tokenizer = load_model(name, dtype=dtype, device=device)
        return cls(model, tokenizer, name=name, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @inference
    def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        n: int = 1,
        max_tokens: int | Sequence[int] = 64,
        stop: Sequence[str] = (),
        temperature: float | Sequence[float] = 1.0,
        seed: int | Sequence[int] | None = None,
    ) -> list[list[Generation]]:
        per_prompt = self._per_prompt(prompts, n, max_tokens, temperature, seed)
        count = len(per_prompt)
        rows = [(*row, j) for row in per_prompt for j in range(n)]
        self.stats.generate_calls += 1
        self.stats.generate_rows += len(rows)
        out: list[Generation] = []
        for start in range(0, len(rows), self.max_batch_size):
            out.extend(self._generate_rows(rows[start : start + self.max_batch_size], tuple(stop)))
        return [out[i * n : (i + 1) * n] for i in range(count)]

    def _generate_rows(self, rows, stop: tuple[str, ...]) -> list[Generation]:
        device = self.device
        num = len(rows)
        budgets = [r[1] for r in rows]
        greedy = [r[2] <= 0.0 for r in rows]
        generators = [self._generator(r[3], r[4]) for r in rows]
        tokens: list[list[int]] = [[] for _ in range(num)]
        logprobs: list[list[float]] = [[] for _ in range(num)]
        finish: list[str | None] = ["length" if b <= 0 else None for b in budgets]

        cache, logits, mask, position = self._prefill([r[0] for r in rows])
        temps = torch.tensor([max(r[2], 1e-6) for r in rows], device=device).unsqueeze(1)
        live = list(range(num))  # row of each batch position
        while True:
            log_p = torch.log_softmax(logits, dim=-1)
            scaled = (logits / temps).cpu()
            next_ids = torch.full((len(live),), self.pad_id, dtype=torch.long)
            for pos, i in enumerate(live):
                if finish[i] is not None:
                    continue
                if greedy[i]:
                    token = int(scaled[pos].argmax())
                else:  # Gumbel-max with this row's own generator
                    u = torch.rand(scaled.shape[-1], generator=generators[i]).clamp_(1e-10, 1.0)
                    token = int((scaled[pos] - torch.log(-torch.log(u))).argmax())
                next_ids[pos] = token
                if token in self.eos_ids:
                    finish[i] = "eos"
                    continue
                tokens[i].append(token)
                logprobs[i].append(float(log_p[pos, token]))
                if stop and any(s in self.decode(tokens[i]) for s in stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= budgets[i]:
                    finish[i] = "length"
            keep = [pos for pos, i in enumerate(live) if finish[i] is None]
            if not keep:
                break
            if len(keep) < len(live):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, position, temps = mask[index], position[index], temps[index]
                next_ids = next_ids[keep]
                live = [live[pos] for pos in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            position = position + 1
            self.stats.generated += len(live)
            out = self.model(
                input_ids=next_ids.view(-1, 1).to(device),
                attention_mask=mask,
                position_ids=position,
                **{self._cache_arg: cache},
                use_cache=True,
            )
            cache, logits = _cache_of(out), out.logits[:, -1, :].float()
        self.stats.sampled += sum(len(t) for t in tokens)
        return [
            Generation(self.decode(t), tuple(t), tuple(lp), f)  # type: ignore[arg-type]
            for t, lp, f in zip(tokens, logprobs, finish, strict=True)
        ]

    def _prefill(self, prompts: list[list[int]]):
        """Run the prompts through the model; rows with the same prompt share one prefill.

        Returns the KV cache, the last position's logits, the attention mask and the last position
        id, one row per prompt.
        """
        device = self.device
        if self.prefix_reuse:
            first: dict[tuple[int, ...], int] = {}
            index = [first.setdefault(tuple(p), len(first)) for p in prompts]
            distinct = [list(p) for p in first]
        else:
            index, distinct = list(range(len(prompts))), prompts
        groups = _shared_heads(distinct, SHARED_HEAD_TOKENS) if self.prefix_reuse else None
        if groups is None:
            cache, logits, mask, position = self._forward_padded(distinct)
        else:  # prompts sharing a head (the instructions and question): the head once, then each tail
            group_of, heads = groups
            cache, _, mask, position = self._forward_padded(heads)
            owner = torch.tensor(group_of, device=device)
            cache.reorder_cache(owner)
            tail_ids, tail_mask = self.left_pad([p[len(heads[g]) :] for p, g in zip(distinct, group_of, strict=True)])
            tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
            position = position[owner, -1:] + tail_mask.cumsum(-1)
            mask = torch.cat([mask[owner], tail_mask], dim=1)
            self.stats.prefill += int(tail_mask.sum())
            out = self.model(input_ids=tail_ids, attention_mask=mask, position_ids=position, **{self._cache_arg: cache})
            cache, logits = _cache_of(out), out.logits[:, -1, :].float()
        if len(distinct) < len(prompts):
            rows = torch.tensor(index, device=device)
            cache.reorder_cache(rows)
            logits, mask, position = logits[rows], mask[rows], position[rows]
        return cache, logits, mask, position[:, -1:]

    @inference
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [(self._ids(p), self._ids(c)) for p, c in zip(prompts, continuations, strict=True)]
        result: list[np.ndarray] = []
        for start in range(0, len(pairs), self.max_batch_size):
            result.extend(self._score_pairs(pairs[start : start + self.max_batch_size]))
        return result

    def _forward_padded(self, sequences: list[list[int]]):
        """One left-padded forward pass with a KV cache: cache, last logits, mask, positions."""
        ids, mask = self.left_pad(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats.prefill += int(mask.sum())
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
        return _cache_of(out), out.logits[:, -1, :].float(), mask, position

    def _score_pairs(self, pairs) -> list[np.ndarray]:
        if not self.prefix_reuse:
            return self._score_full(pairs)
        device = self.device
        cache, last_logits, mask, position = self._prefill([p for p, _ in pairs])
        first = torch.log_softmax(last_logits, dim=-1)  # predicts each continuation's first token
        width = max(1, max(len(c) for _, c in pairs))
        conts = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        fed = torch.zeros((len(pairs), width - 1), dtype=torch.long)  # tokens that predict a later one
        for i, (_, c) in enumerate(pairs):
            conts[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            fed[i, : max(len(c) - 1, 0)] = 1
        conts, fed = conts.to(device), fed.to(device)
        token_log_p = first.gather(-1, conts[:, :1]).cpu()
        if width > 1:  # the rest of each continuation, on top of the cached prompt (right-padded)
            steps = torch.arange(1, width, device=device).unsqueeze(0)
            self.stats.scored += int(fed.sum())
            logits = self.model(
                input_ids=conts[:, :-1],
                attention_mask=torch.cat([mask, fed], dim=1),
                position_ids=position + steps,
                **{self._cache_arg: cache},
            ).logits.float()
            rest = torch.log_softmax(logits, dim=-1).gather(-1, conts[:, 1:].unsqueeze(-1)).squeeze(-1)
            token_log_p = torch.cat([token_log_p, rest.cpu()], dim=1)
        token_log_p = token_log_p.numpy()
        return [token_log_p[i, : len(c)].astype(np.float32).copy() for i, (_, c) in enumerate(pairs)]

    def _score_full(self, pairs) -> list[np.ndarray]:
        device = self.device
        ids, mask = self.left_pad([p + c for p, c in pairs])
        self.stats.prefill += int(mask.sum())
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position.to(device)
        ).logits.float()
        log_p = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = ids[:, 1:].to(device)
        token_log_p = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1).cpu().numpy()
        width = ids.shape[1]
        out = []
        for row, (_, cont) in enumerate(pairs):
            # position t of token_log_p predicts ids[:, t + 1]; the continuation fills the row's end
            out.append(token_log_p[row, width - 1 - len(cont) :].astype(np.float32).copy())
        return out

    @inference
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length mean-pooled last hidden states of ``texts`` ([N, hidden] float32)."""
        ids, mask = self.left_pad([self.encode(t) or [self.eos_token_id] for t in texts])
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.model(input_ids=ids, attention_mask=mask, position_ids=position, output_hidden_states=True)
        last = hidden.hidden_states[-1].float() * mask.unsqueeze(-1)
        pooled = last.sum(1) / mask.sum(1, keepdim=True)
        return torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()

    def left_pad(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token-id lists as a left-padded [B, T] batch and its attention mask (CPU tensors)."""
        if any(len(s) == 0 for s in sequences):
            raise ValueError("a prompt is empty: the model needs at least one token to condition on")
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, s in enumerate(sequences):
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
        return ids, mask

    @staticmethod
    def _generator(seed: int | None, sample: int) -> torch.Generator:
        g = torch.Generator()
        if seed is None:
            g.seed()
        else:
            g.manual_seed((int(seed) * 1_000_003 + sample) % (2**63))
        return g
