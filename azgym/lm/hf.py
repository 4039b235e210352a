"""transformers backend: batched sampling with a KV cache and batched scoring, CPU or GPU.

The sampling loop is written out here rather than delegated to ``model.generate`` for three
reasons the environment depends on: per-sample seeded generators (a sample does not change when
the batch around it does), per-prompt temperatures and token budgets in one batch, and the
log-prob of every sampled token.

Prefix reuse (on by default): rows of one call that share a prompt (the K candidates of a state,
``n`` samples of a prompt) run that prompt through the model once and copy its KV cache, and
scoring runs each distinct prompt once and its continuations on top of the cached prefix. Rows
that finish early leave the batch, so a long sample does not keep finished rows computing.

Across calls (``prefix_cache_bytes`` > 0, the default): every sequence run through the model leaves
its keys and values (and final hidden states) in a :class:`~azgym.lm.prefix_cache.PrefixCache`, a
radix tree over token ids bounded in bytes, and every call runs only what follows each prompt's
longest cached prefix. A search then computes a state's prompt + response once, whether it is
proposing that state's candidates, scoring them under the solve prompt or valuing it
(:meth:`HFBackend.last_hidden` reads a hidden state a scoring pass already made). Scoring then runs
each continuation with its prompt's last token in one pass, rows of similar lengths batched together
(:func:`~azgym.lm.hf_prefix.length_buckets`); passes that only need the next token's logits compute
them at the last position alone (``logits_to_keep``). The cache is
dropped whenever a parameter of the model changes (a learner step; call ``clear_prefix_cache`` after
moving the model to another device or dtype, which keeps the values), and is off for models whose KV
cache is not one plain full-attention layer per block (sliding windows, recurrent state).
``stats`` counts the tokens each call prefilled, generated, scored and took from the cache, and the
seconds spent in each method.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
import torch

from azgym.lm.base import Generation, Prompt, TokenizerMixin
from azgym.lm.decode import LeanDecoder, lean_decoder
from azgym.lm.hf_prefix import (
    SHARED_HEAD_TOKENS,
    PrefixCacheMixin,
    TokenStats,
    cache_argument,
    cache_of,
    logits_keyword,
    shared_heads,
    timed,
)
from azgym.lm.modes import inference
from azgym.lm.precision import inference_copy, resolve
from azgym.lm.prefix_cache import PrefixCache, supports_prefix_cache, weights_fingerprint
from azgym.lm.registry import load_model
from azgym.lm.sampling import sample_rows, stop_window

logger = logging.getLogger(__name__)


DEFAULT_PREFIX_CACHE_BYTES = 1 << 30  # 1 GiB of keys and values kept across calls (~23k tokens of SmolLM2-135M, fp32)


@functools.lru_cache(maxsize=4)
def shared_backend(name: str, device: str = "cpu") -> HFBackend:
    """One loaded :class:`HFBackend` per (name, device), shared by every env and teacher ensemble in the
    process (fp32)."""
    return HFBackend.from_name(name, device=device)


class HFBackend(PrefixCacheMixin, TokenizerMixin):
    """A transformers causal LM behind the :class:`~azgym.lm.base.LanguageModel` protocol.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device.
        tokenizer: its tokenizer.
        name: a label for logs.
        max_batch_size: rows per forward pass; larger calls are split.
        prefix_reuse: prefill a prompt shared by several rows once (see the module docs); off, every
            row runs its whole prompt and the prefix cache is off too.
        prefix_cache_bytes: memory for keys and values kept across calls (see the module docs); 0 turns
            the cross-call cache off (the in-call reuse stays).
        precision: ``float32`` runs the model as it is; ``bfloat16`` (or ``auto`` where the device multiplies
            bfloat16 natively) runs every pass on a bfloat16 copy of its weights, LoRA merged in, rebuilt when
            the model's weights change (:mod:`azgym.lm.precision`). Log-probs are computed in float32 either way.
        lean_decode: on a CPU, decode steps and the prefix cache's passes (prompts, scoring, values) on that copy
            run through :class:`~azgym.lm.decode.LeanDecoder` (fused products, a preallocated KV cache) where its
            architecture allows; off, through the model's forward.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        max_batch_size: int = 32,
        prefix_reuse: bool = True,
        prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES,
        precision: str = "float32",
        lean_decode: bool = True,
    ):
        if prefix_cache_bytes < 0:
            raise ValueError(f"prefix_cache_bytes must be >= 0 (0 turns the cache off), got {prefix_cache_bytes}")
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
        self._cache_arg = cache_argument(model)
        self._logits_arg = logits_keyword(model)
        self._scored = {}  # (prompt, continuation) -> its log-probs, while the prefix cache holds
        self.prefix_cache: PrefixCache | None = None
        if prefix_reuse and prefix_cache_bytes:
            if supports_prefix_cache(model):
                self.prefix_cache = PrefixCache(prefix_cache_bytes)
            else:
                logger.info("%s: its KV cache is not plain full attention; the cross-call prefix cache is off", name)
        self._fingerprint = weights_fingerprint(model)
        self.compute_dtype = resolve(precision, self.device)
        self._copy = inference_copy(model, self.compute_dtype)
        self.lean_decode = lean_decode
        self._lean: LeanDecoder | None | bool = False  # False: not built yet; None: the copy's layout has none (kept)

    @property
    def runner(self) -> torch.nn.Module:
        """The module every pass runs: the model, or its bfloat16 inference copy (kept current by the weight
        check each call makes)."""
        return self._copy.model if self._copy is not None else self.model

    def _decoder(self) -> LeanDecoder | None:
        """The lean decoder of the inference copy (built when first needed after each refresh of the copy: it holds
        copies of the weights), or None: off, not on a CPU, no copy, or an architecture it does not cover."""
        if not self.lean_decode or self._copy is None or self.device.type != "cpu":
            return None
        if self._lean is False:
            self._lean = lean_decoder(self._copy.model)
            if self._lean is None:  # the architecture does not change with the weights: not tried again
                logger.info("%s: no lean decoder for its architecture; decoding through its forward", self.name)
        return self._lean or None

    @classmethod
    def from_name(cls, name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs) -> HFBackend:
        """Load by short name (e.g. ``smollm2-135m-instruct``), local path or Hub id."""
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
        with timed(self.stats, "generate_s"):
            self._check_weights()
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

        steps = max(0, *budgets)
        cache, logits, mask, position = self._prefill([r[0] for r in rows], room=steps)
        if (decoder := self._decoder()) is not None:
            cache = decoder.start(cache, mask, steps)
        temps = torch.tensor([max(r[2], 1e-6) for r in rows], device=device)
        window = stop_window(stop)
        live, gone = list(range(num)), set()  # row of each batch position; rows finished
        while True:
            drawn, drawn_logprobs = sample_rows(
                logits,
                [None if finish[i] is not None else generators[i] for i in live],
                [greedy[i] for i in live],
                temps,
            )
            next_ids = [self.pad_id] * len(live)
            for pos, i in enumerate(live):
                if finish[i] is not None:
                    continue
                token = drawn[pos]
                next_ids[pos] = token
                if token in self.eos_ids:
                    finish[i] = "eos"
                    continue
                tokens[i].append(token)
                logprobs[i].append(drawn_logprobs[pos])
                # only the newest text can complete a stop string: the last few tokens are decoded, not the sample
                if stop and any(s in self.decode(tokens[i][-window:]) for s in stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= budgets[i]:
                    finish[i] = "length"
            ended = [(pos, i) for pos, i in enumerate(live) if finish[i] is not None and i not in gone]
            gone.update(i for _, i in ended)
            if self.prefix_cache is not None and ended:  # a finished row leaves its prompt + sample in the cache
                self._remember([rows[i][0] + tokens[i] for _, i in ended], cache, mask, rows=[p for p, _ in ended])
            keep = [pos for pos, i in enumerate(live) if finish[i] is None]
            if not keep:
                break
            # finished rows leave the batch; the lean decoder's once half of it has (moving its cache costs steps)
            if len(keep) < len(live) and (decoder is None or 2 * len(keep) <= len(live)):
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                mask, position, temps = mask[index], position[index], temps[index]
                next_ids = [next_ids[pos] for pos in keep]
                live = [live[pos] for pos in keep]
            mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
            position = position + 1
            self.stats.generated += len(keep)
            ids = torch.tensor(next_ids, device=device)
            if decoder is not None:
                logits = decoder.step(cache, ids, mask, position)
            else:
                kwargs = {"attention_mask": mask, "position_ids": position, self._cache_arg: cache, "use_cache": True}
                out = self.runner(input_ids=ids.view(-1, 1), **kwargs)
                cache, logits = cache_of(out), out.logits[:, -1, :].float()
        self.stats.sampled += sum(len(t) for t in tokens)
        return [
            Generation(self.decode(t), tuple(t), tuple(lp), f)  # type: ignore[arg-type]
            for t, lp, f in zip(tokens, logprobs, finish, strict=True)
        ]

    def _prefill(self, prompts: list[list[int]], room: int = 0):
        """Run the prompts through the model; rows with the same prompt share one prefill.

        Returns the KV cache (with ``room`` free columns where the lean decoder ran it in one pass), the last
        position's logits, the attention mask and the last position id, one row per prompt.
        """
        device = self.device
        if self.prefix_reuse:
            first: dict[tuple[int, ...], int] = {}
            index = [first.setdefault(tuple(p), len(first)) for p in prompts]
            distinct = [list(p) for p in first]
        else:
            index, distinct = list(range(len(prompts))), prompts
        if self.prefix_cache is not None:
            return self._spread(*self._prefill_cached(distinct, room), index, len(distinct))
        groups = shared_heads(distinct, SHARED_HEAD_TOKENS) if self.prefix_reuse else None
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
            out = self.runner(
                input_ids=tail_ids,
                attention_mask=mask,
                position_ids=position,
                **{self._cache_arg: cache},
                **self._logits_kept(1),
            )
            cache, logits = cache_of(out), out.logits[:, -1, :].float()
        return self._spread(cache, logits, mask, position[:, -1:], index, len(distinct))

    def _spread(self, cache, logits, mask, position, index: list[int], num_distinct: int):
        """One row per prompt from one per distinct prompt (``index``: the distinct row of each prompt)."""
        if num_distinct < len(index):
            rows = torch.tensor(index, device=logits.device)
            cache.reorder_cache(rows)
            logits, mask, position = logits[rows], mask[rows], position[rows]
        return cache, logits, mask, position

    @inference
    def last_hidden(self, prompts: Sequence[Prompt]) -> torch.Tensor:
        """[N, hidden] float32 final hidden state at each prompt's last token (what a value head reads).
        With the prefix cache, a prompt a scoring pass already ran costs nothing."""
        sequences = [self._ids(p) for p in prompts]
        if any(len(s) == 0 for s in sequences):
            raise ValueError("a prompt is empty: the model needs at least one token to condition on")
        with timed(self.stats, "value_s"):
            self._check_weights()
            found: dict[tuple[int, ...], torch.Tensor] = {}
            if self.prefix_cache is not None:
                for s in sequences:
                    h = self.prefix_cache.hidden_at(s)
                    if h is not None:
                        found[tuple(s)] = h
            todo = list(dict.fromkeys(tuple(s) for s in sequences if tuple(s) not in found))
            for start in range(0, len(todo), self.max_batch_size):
                chunk = [list(s) for s in todo[start : start + self.max_batch_size]]
                for s, h in zip(todo[start : start + len(chunk)], self._hidden_of(chunk), strict=True):
                    found[s] = h
            if not sequences:
                return torch.zeros((0, self.model.config.hidden_size), device=self.device)
            return torch.stack([found[tuple(s)] for s in sequences]).float()

    @inference
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [(self._ids(p), self._ids(c)) for p, c in zip(prompts, continuations, strict=True)]
        result: list[np.ndarray] = []
        with timed(self.stats, "score_s"):
            self._check_weights()
            if self.prefix_cache is not None and pairs:  # one pass per batch of similar lengths, on cached prompts
                return self._score_cached(pairs)
            for start in range(0, len(pairs), self.max_batch_size):
                result.extend(self._score_pairs(pairs[start : start + self.max_batch_size]))
        return result

    def _forward_padded(self, sequences: list[list[int]]):
        """One left-padded forward pass with a KV cache: cache, last logits, mask, positions."""
        ids, mask = self.left_pad(sequences)
        ids, mask = ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        self.stats.prefill += int(mask.sum())
        out = self.runner(
            input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True, **self._logits_kept(1)
        )
        return cache_of(out), out.logits[:, -1, :].float(), mask, position

    def _score_pairs(self, pairs) -> list[np.ndarray]:
        if not self.prefix_reuse:
            return self._score_full(pairs)
        device = self.device
        cache, last_logits, mask, position = self._prefill([p for p, _ in pairs])
        first = torch.log_softmax(last_logits, dim=-1)  # predicts each continuation's first token
        width = max(1, max(len(c) for _, c in pairs))
        # all but the last token of each continuation run on top of the prompt (right-padded)
        conts = torch.full((len(pairs), width), self.pad_id, dtype=torch.long)
        fed = torch.zeros((len(pairs), width - 1), dtype=torch.long)
        for i, (_, c) in enumerate(pairs):
            conts[i, : len(c)] = torch.tensor(c, dtype=torch.long)
            fed[i, : max(len(c) - 1, 0)] = 1
        conts, fed = conts.to(device), fed.to(device)
        token_log_p = first.gather(-1, conts[:, :1]).cpu()
        if width > 1:
            steps = torch.arange(1, width, device=device).unsqueeze(0)
            self.stats.scored += int(fed.sum())
            mask = torch.cat([mask, fed], dim=1)
            out = self.runner(
                input_ids=conts[:, : width - 1],
                attention_mask=mask,
                position_ids=position + steps,
                use_cache=False,
                **{self._cache_arg: cache},
            )
            logits = out.logits.float()
            rest = torch.log_softmax(logits, dim=-1).gather(-1, conts[:, 1:].unsqueeze(-1)).squeeze(-1)
            token_log_p = torch.cat([token_log_p, rest.cpu()], dim=1)
        token_log_p = token_log_p.numpy()
        return [token_log_p[i, : len(c)].astype(np.float32).copy() for i, (_, c) in enumerate(pairs)]

    def _score_full(self, pairs) -> list[np.ndarray]:
        device = self.device
        ids, mask = self.left_pad([p + c for p, c in pairs])
        self.stats.prefill += int(mask.sum())
        position = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.runner(
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
        hidden = self.runner(
            input_ids=ids, attention_mask=mask, position_ids=position, output_hidden_states=True, **self._logits_kept(1)
        )
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
