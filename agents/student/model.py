"""The student: a causal LM with a value head, trained with LoRA (optionally on a 4-bit base).

One forward pass over ``prompt + completion`` gives both what the learner needs: the log-prob of
every completion token and the value of any prefix (the value head reads the final hidden state
at the prefix's last token). The frozen reference for KL is the same network with its adapter
switched off when LoRA is on (no second copy), else a copy refreshed by :meth:`Student.refresh_reference`.
"""

from __future__ import annotations

import copy
import logging
import secrets
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from agents.student.dropout import use_lane_dropout
from agents.student.value import ValueHead
from azgym.config import check_fields, option, raise_problems
from azgym.lm.hf import HFBackend
from azgym.lm.hf_prefix import logits_keyword
from azgym.lm.precision import PRECISIONS, FrozenCasts, autocast, contiguous_head_input, resolve
from azgym.lm.registry import DEFAULT_MODEL, load_model

logger = logging.getLogger(__name__)

# the widest batch whose learner passes use plain attention on a CPU: forward + backward of attention beat the
# fused kernel's below ~300 positions on this 2-core CPU (8 rows x 9 heads x 64, bfloat16, causal: 3 vs 12 ms at
# 80 positions, 5 vs 16 at 128, 20 vs 23 at 256, 76 vs 47 at 350) and store [rows, heads, width, width] probabilities
EAGER_MAX_WIDTH = 256

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StudentConfig:
    """The student: which model, LoRA or full fine-tuning, precision and device (saved with checkpoints)."""

    model: str = option(DEFAULT_MODEL, "student (and teacher) model: a short name, local path or Hub id")
    init_from: str = option(
        "",
        "start from a checkpoint's trained weights (sft.py's or selfplay.py's): a step-N or "
        "best directory, or a run directory (its newest); its model and LoRA shape (lora, "
        "lora_r, lora_alpha, lora_targets) replace these flags",
    )
    lora: bool = option(True, "train LoRA adapters (--no-lora: every weight)")
    lora_r: int = option(32, "rank r of the LoRA adapters")
    lora_alpha: int = option(32, "LoRA alpha (the adapter's scale is alpha / r)")
    lora_dropout: float = option(0.05, "dropout on the LoRA path (masks from 16-bit random lanes: student/dropout.py)")
    lora_targets: tuple[str, ...] = option(
        LORA_TARGETS, "module names that get adapters (attention and MLP projections)"
    )
    load_in_4bit: bool = option(False, "NF4 base weights through bitsandbytes (needs LoRA)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    dtype: str = option(
        "auto",
        "weights' dtype; auto: bfloat16 on a GPU that supports it, else float32",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    precision: str = option(
        "auto",
        "arithmetic of the matrix products: auto (bfloat16 where the device multiplies it natively, a CPU with "
        "AVX512-BF16/AMX or a bf16 GPU, else float32), float32, or bfloat16; inference runs on a bfloat16 copy of "
        "the weights, the learner under autocast with float32 weights, log-probs and the value head in float32",
        choices=PRECISIONS,
    )
    device: str = option("cpu", "device of the student (and of teachers loaded by name): cpu, cuda, cuda:1, ...")
    prefix_cache_mib: int = option(
        1024,
        "memory (MiB) for the keys and values of the student's prefix cache, kept "
        "across calls of a search; 0 turns it off",
    )

    def __post_init__(self):
        raise_problems(
            self,
            check_fields(
                self,
                {
                    "load_in_4bit": (
                        self.lora or not self.load_in_4bit,
                        "off without LoRA (4-bit trains adapters on frozen weights)",
                    ),
                    "lora_r": (not self.lora or self.lora_r >= 1, ">= 1"),
                    "lora_alpha": (not self.lora or self.lora_alpha > 0, "> 0"),
                    "lora_dropout": (not self.lora or 0 <= self.lora_dropout < 1, "in [0, 1)"),
                    "lora_targets": (not self.lora or len(self.lora_targets) > 0, "at least one module name"),
                    "prefix_cache_mib": (self.prefix_cache_mib >= 0, ">= 0 (0 turns the prefix cache off)"),
                },
            ),
        )

    def torch_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        cuda = self.device.startswith("cuda") and torch.cuda.is_available()
        return torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float32


@dataclass
class Forward:
    """What one pass over a batch of ``prompt + completion`` sequences gives."""

    logprobs: torch.Tensor  # [B, T-1] log-prob of token t+1 given tokens <= t
    mask: torch.Tensor  # [B, T-1] 1 where token t+1 is a completion token
    values: torch.Tensor  # [B, V] values at the requested prefixes (0 where padded)
    value_mask: torch.Tensor  # [B, V] 1 for real value positions
    entropy: torch.Tensor  # [] mean entropy of the next-token distribution over completion tokens
    first: int = 0  # logits were computed from this position on (the batch's first completion token); 0 before it
    extra: dict = field(default_factory=dict)


class Student(nn.Module):
    """Causal LM + value head. Build with :meth:`from_config` or wrap an existing model."""

    def __init__(self, model: nn.Module, tokenizer, config: StudentConfig):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.model = model
        hidden = model.config.hidden_size if not hasattr(model, "peft_config") else model.base_model.config.hidden_size
        self.value_head = ValueHead(hidden).to(next(model.parameters()).device)
        self._reference: nn.Module | None = None
        # 0 for the frozen base (LoRA); a full fine-tuning's reference gets a fresh random id at each refresh, so
        # log-probs stored with episodes (replay) never match a reference of another process or run
        self.reference_version = 0
        self._logits_arg = logits_keyword(model)
        self._compute_dtype = resolve(config.precision, self.device)
        if self._compute_dtype != torch.float32:  # before the reference copy below, so that it has the hook too
            contiguous_head_input(model)  # the learner keeps logits from a position on: a strided slice
        self._frozen = (
            FrozenCasts(model, self._compute_dtype)
            if config.lora and not config.load_in_4bit and self._compute_dtype != torch.float32
            else None
        )
        if not config.lora:
            self.refresh_reference()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)

    @classmethod
    def from_config(cls, config: StudentConfig, *, model: nn.Module | None = None, tokenizer=None) -> Student:
        """Load ``config.model`` (or take ``model`` + ``tokenizer``) and add LoRA / 4-bit as configured. A config
        with ``init_from`` is built by :func:`agents.training.checkpoint.build_student` (checkpoints are the
        trainer's format; the student does not read them)."""
        if config.init_from:
            raise ValueError(
                f"init_from={config.init_from!r}: build this student with agents.training.checkpoint.build_student, "
                "which loads the checkpoint's weights"
            )
        if model is None:
            if config.load_in_4bit:
                model, tokenizer = _load_4bit(config)
            else:
                model, tokenizer = load_model(config.model, dtype=config.torch_dtype(), device=config.device)
        if config.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        if config.lora:
            from peft import LoraConfig, get_peft_model

            if config.load_in_4bit:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
            present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
            targets = [t for t in config.lora_targets if t in present]
            if not targets:
                raise ValueError(
                    f"none of the LoRA target modules {list(config.lora_targets)} exist in {config.model}; "
                    f"its linear layers are named like {sorted(present)[:12]}"
                )
            lora = LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=targets,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
            use_lane_dropout(model)
        model.train()
        return cls(model, tokenizer, config)

    # -- parameters --------------------------------------------------------------------------------

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name: LoRA adapters (or all weights) and the value head."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {n for n, p in own.items() if p.requires_grad}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(
                f"the saved weights do not fit this student: {len(missing)} missing (e.g. {sorted(missing)[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {sorted(unexpected)[:2]}); was it saved with another model "
                f"or LoRA setting?"
            )
        with torch.no_grad():
            for name in expected:
                if own[name].shape != state[name].shape:
                    raise ValueError(
                        f"{name}: saved shape {tuple(state[name].shape)}, model has {tuple(own[name].shape)}"
                    )
                own[name].copy_(state[name])

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the matrix products (``config.precision`` on this device): the learner's autocast and the
        inference copy's weights."""
        return self._compute_dtype

    @contextmanager
    def autocast(self, width: int, model: nn.Module | None = None) -> Iterator[None]:
        """The context of the learner's passes over ``width`` positions of ``model`` (the student's by default, or
        its full fine-tuning reference): autocast to :attr:`compute_dtype`; in bfloat16, frozen weights through their
        stored casts and, on a CPU, plain (eager) attention up to :data:`EAGER_MAX_WIDTH` positions, where it is
        faster than the fused kernel (not with gradient checkpointing: its recomputation in the backward pass, after
        the context, must run the attention the forward ran)."""
        model = self.model if model is None else model
        with ExitStack() as stack:
            stack.enter_context(autocast(self.device, self.compute_dtype))
            if self._frozen is not None:
                stack.enter_context(self._frozen.swapped())
            if (
                self.device.type == "cpu"
                and self.compute_dtype != torch.float32
                and width <= EAGER_MAX_WIDTH
                and not self.config.gradient_checkpointing
            ):
                stack.enter_context(_attention(model, "eager"))
            yield

    # -- the reference policy ------------------------------------------------------------------------

    def refresh_reference(self) -> None:
        """Make the current weights the KL reference (a no-op with LoRA: the reference is the base)."""
        if self.config.lora:
            return
        self.reference_version = secrets.randbits(62) + 1
        self._reference = copy.deepcopy(self.model).eval()
        for p in self._reference.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def reference_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, first: int = 0) -> torch.Tensor:
        """[B, T-1] log-probs of the tokens under the reference policy (0 before position ``first``)."""
        if self.config.lora:
            context, model = self.model.disable_adapter(), self.model
        else:
            context, model = nullcontext(), self._reference
        with context, self.autocast(input_ids.shape[1], model):
            logits = model(
                input_ids=input_ids, attention_mask=attention_mask, **self._from_position(first, input_ids)
            ).logits
        return token_logprobs(logits, input_ids, first)

    # -- the pass the learner uses -----------------------------------------------------------------

    def forward_batch(
        self,
        sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
        value_positions: Sequence[Sequence[int]] | None = None,
    ) -> tuple[Forward, torch.Tensor, torch.Tensor]:
        """Log-probs of every completion token and values at chosen prefixes, in one pass.

        ``sequences``: ``(prompt_ids, completion_ids)`` pairs. ``value_positions[i]``: prefix lengths
        into completion i whose value to read (0 = the prompt alone). Returns the :class:`Forward`
        and the right-padded ``input_ids`` / ``attention_mask`` it ran on.
        """
        ids, mask, prompt_lengths = self.right_pad(sequences)
        first = min(prompt_lengths) - 1  # no log-prob is read before the batch's first completion token
        with self.autocast(ids.shape[1]):
            out = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, **self._from_position(first, ids)
            )
        logits = out.logits[:, first - ids.shape[1] :]
        logprobs = token_logprobs(logits, ids, first)
        positions = torch.arange(ids.shape[1] - 1, device=ids.device)[None, :]
        starts = torch.tensor(prompt_lengths, device=ids.device)[:, None]
        completion = (positions >= starts - 1) & (mask[:, 1:] > 0)
        with torch.no_grad():
            entropy = _mean_entropy(logits[:, :-1], completion[:, first:])
        value_positions = value_positions or [[] for _ in sequences]
        width = max((len(v) for v in value_positions), default=0)
        values = torch.zeros(len(sequences), width, device=ids.device)
        value_mask = torch.zeros(len(sequences), width, device=ids.device)
        if width:
            hidden = out.hidden_states[-1]
            rows, cols, index = [], [], []
            for i, prefixes in enumerate(value_positions):
                for j, t in enumerate(prefixes):
                    if not 0 <= t <= len(sequences[i][1]):
                        raise ValueError(f"value position {t} outside completion {i} of length {len(sequences[i][1])}")
                    rows.append(i)
                    cols.append(j)
                    index.append(prompt_lengths[i] + t - 1)  # the prefix's last token
            picked = self.value_head(hidden[rows, index].float())
            values = values.index_put((torch.tensor(rows), torch.tensor(cols)), picked)
            value_mask[rows, cols] = 1.0
        return Forward(logprobs, completion.float(), values, value_mask, entropy, first), ids, mask

    def _from_position(self, first: int, ids: torch.Tensor) -> dict:
        """The keyword that makes the model compute logits from position ``first`` on only (none where its forward
        has no such keyword: it computes them all and the caller slices)."""
        return {self._logits_arg: ids.shape[1] - first} if self._logits_arg else {}

    def right_pad(self, sequences):
        """``(prompt, completion)`` pairs as a right-padded batch on the device, its mask, the prompt lengths."""
        lengths = [len(p) + len(c) for p, c in sequences]
        if any(len(p) == 0 for p, _ in sequences):
            raise ValueError("a training sequence has an empty prompt; every sample needs its prompt tokens")
        width = max(lengths)
        ids = torch.full((len(sequences), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for i, (p, c) in enumerate(sequences):
            row = list(p) + list(c)
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device), [len(p) for p, _ in sequences]

    def backend(self, name: str = "student", **kwargs) -> HFBackend:
        """The student as a :class:`~azgym.lm.LanguageModel` (generation and scoring share its weights).
        Its prefix cache holds ``config.prefix_cache_mib`` and empties itself after each learner step."""
        kwargs.setdefault("prefix_cache_bytes", self.config.prefix_cache_mib * 2**20)
        kwargs.setdefault("precision", self.config.precision)
        return HFBackend(self.model, self.tokenizer, name=name, **kwargs)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, first: int = 0) -> torch.Tensor:
    """[B, T-1] float32 log-prob of ``ids[:, t+1]`` under the logits at position t, without a [B, T, V] log-softmax
    copy. Only positions ``first`` .. T-1 of ``logits`` are read (all a pass with ``logits_to_keep`` returns, or
    the tail of every position's); earlier log-probs are 0."""
    logits = logits[:, first - ids.shape[1] : -1].float()
    picked = logits.gather(-1, ids[:, first + 1 :].unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(picked, (first, 0)) if first else picked


def _mean_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the next-token distributions at the masked positions only."""
    selected = logits[mask.bool()].float()
    if selected.numel() == 0:
        return torch.zeros((), device=logits.device)
    log_p = torch.log_softmax(selected, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def _load_4bit(config: StudentConfig):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise ImportError("load_in_4bit needs bitsandbytes: pip install 'azgym[quant]'") from err
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from azgym.lm.registry import resolve_model

    source = resolve_model(config.model)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(source, quantization_config=quant, device_map=config.device)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextmanager
def _attention(model: nn.Module, implementation: str) -> Iterator[None]:
    """``model`` computes attention with ``implementation`` for the duration (its config's choice, read at each
    forward pass by transformers' attention layers and mask builder)."""
    config = model.config
    before = getattr(config, "_attn_implementation", None)
    if before is None or before == implementation:
        yield
        return
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before
