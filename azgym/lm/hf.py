"""transformers backend: batched sampling with a KV cache and batched scoring, CPU or GPU.

The sampling loop is written out here rather than delegated to ``model.generate`` for three
reasons the environment depends on: per-sample seeded generators (a sample does not change when
the batch around it does), per-prompt temperatures and token budgets in one batch, and the
log-prob of every sampled token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from azgym.lm.base import Generation, Prompt, broadcast

logger = logging.getLogger(__name__)


class HFBackend:
    """A transformers causal LM behind the :class:`~azgym.lm.base.LanguageModel` protocol.

    Args:
        model: a causal LM (``AutoModelForCausalLM``), already on its device.
        tokenizer: its tokenizer.
        name: a label for logs.
        max_batch_size: rows per forward pass; larger calls are split.
    """

    def __init__(self, model, tokenizer, *, name: str = "model", max_batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_batch_size = max_batch_size
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        if not self.eos_ids:
            raise ValueError(f"{name}: neither the model nor the tokenizer defines an end-of-sequence token")
        self.eos_token_id = int(tokenizer.eos_token_id if tokenizer.eos_token_id in self.eos_ids else min(self.eos_ids))

    @classmethod
    def from_name(cls, name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs) -> HFBackend:
        """Load by short name (e.g. ``smollm2-135m-instruct``), local path or Hub id."""
        from azgym.models import load_model

        model, tokenizer = load_model(name, dtype=dtype, device=device)
        return cls(model, tokenizer, name=name, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(token_ids), skip_special_tokens=False)

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        else:  # base models: a plain transcript
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant:"
        return self.encode(text)

    def _ids(self, prompt: Prompt) -> list[int]:
        return self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]

    @torch.inference_mode()
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
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        count = len(prompts)
        budgets = broadcast(max_tokens, count, "max_tokens")
        temps = broadcast(temperature, count, "temperature")
        seeds = broadcast(seed, count, "seed")
        rows = [
            (self._ids(p), int(b), float(t), s, j)
            for p, b, t, s in zip(prompts, budgets, temps, seeds, strict=True)
            for j in range(n)
        ]
        out: list[Generation] = []
        for start in range(0, len(rows), self.max_batch_size):
            out.extend(self._generate_rows(rows[start : start + self.max_batch_size], tuple(stop)))
        return [out[i * n : (i + 1) * n] for i in range(count)]

    def _generate_rows(self, rows, stop: tuple[str, ...]) -> list[Generation]:
        device = self.device
        ids, mask = self.left_pad([r[0] for r in rows])
        ids, mask = ids.to(device), mask.to(device)
        budgets = [r[1] for r in rows]
        temps = torch.tensor([max(r[2], 1e-6) for r in rows], device=device).unsqueeze(1)
        greedy = [r[2] <= 0.0 for r in rows]
        generators = [self._generator(r[3], r[4]) for r in rows]
        num = len(rows)
        tokens: list[list[int]] = [[] for _ in range(num)]
        logprobs: list[list[float]] = [[] for _ in range(num)]
        finish: list[str | None] = [None] * num
        for i, b in enumerate(budgets):
            if b <= 0:
                finish[i] = "length"

        position = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        last_position = position[:, -1:]
        step = 0
        while any(f is None for f in finish):
            log_p = torch.log_softmax(logits, dim=-1)
            scaled = logits / temps
            next_ids = torch.empty(num, dtype=torch.long)
            for i in range(num):
                if finish[i] is not None:
                    next_ids[i] = self.pad_id
                elif greedy[i]:
                    next_ids[i] = int(scaled[i].argmax())
                else:  # Gumbel-max with this row's own generator
                    u = torch.rand(scaled.shape[-1], generator=generators[i]).clamp_(1e-10, 1.0)
                    next_ids[i] = int((scaled[i].cpu() - torch.log(-torch.log(u))).argmax())
            step += 1
            for i in range(num):
                if finish[i] is not None:
                    continue
                token = int(next_ids[i])
                if token in self.eos_ids:
                    finish[i] = "eos"
                    continue
                tokens[i].append(token)
                logprobs[i].append(float(log_p[i, token]))
                if stop and any(s in self.decode(tokens[i]) for s in stop):
                    finish[i] = "stop"
                elif len(tokens[i]) >= budgets[i]:
                    finish[i] = "length"
            if all(f is not None for f in finish):
                break
            mask = torch.cat([mask, mask.new_ones(num, 1)], dim=1)
            last_position = last_position + 1
            out = self.model(
                input_ids=next_ids.view(num, 1).to(device),
                attention_mask=mask,
                position_ids=last_position,
                past_key_values=cache,
                use_cache=True,
            )
            cache, logits = out.past_key_values, out.logits[:, -1, :].float()
        return [
            Generation(self.decode(t), tuple(t), tuple(lp), f)  # type: ignore[arg-type]
            for t, lp, f in zip(tokens, logprobs, finish, strict=True)
        ]

    @torch.inference_mode()
    def score(self, prompts: Sequence[Prompt], continuations: Sequence[Prompt]) -> list[np.ndarray]:
        if len(prompts) != len(continuations):
            raise ValueError(f"score got {len(prompts)} prompts but {len(continuations)} continuations")
        pairs = [(self._ids(p), self._ids(c)) for p, c in zip(prompts, continuations, strict=True)]
        result: list[np.ndarray] = []
        for start in range(0, len(pairs), self.max_batch_size):
            result.extend(self._score_pairs(pairs[start : start + self.max_batch_size]))
        return result

    def _score_pairs(self, pairs) -> list[np.ndarray]:
        device = self.device
        ids, mask = self.left_pad([p + c for p, c in pairs])
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
