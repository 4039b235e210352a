"""Which arithmetic the matrix units run: bfloat16 where the hardware has it, float32 elsewhere.

``precision`` is one of :data:`PRECISIONS`: ``auto`` takes bfloat16 on a CPU with AVX512-BF16 or AMX and on a GPU
that supports it, float32 elsewhere (with a log line, never an error); ``float32`` and ``bfloat16`` force one.

Passes that do not train (sampling, scoring, values, evaluation) run on :class:`InferenceCopy`: the model's weights
in bfloat16 with any LoRA adapter merged in, rebuilt from the float32 model whenever its weights change. On a CPU,
autocast would recast every float32 weight at every matrix product (reading 4 bytes, writing 2, reading 2), so a
decode step moves more memory than in float32; a stored copy reads 2 bytes a weight. The learner instead keeps its
float32 weights (the optimizer's master copy) and runs forward and backward under autocast, where a batch of
hundreds of positions makes the products compute-bound, the frozen weights of a LoRA base cast once
(:class:`FrozenCasts`); log-probabilities, ratios, KL and the value head stay in float32 (:func:`autocast`).

What bfloat16 gives up: a row's logits are the same whatever the batch around it only in float32 (bfloat16
products round per shape), so a seeded sample is drawn from the same distribution but a near-tie can flip a token
when the batch changes; tests that compare episodes across batchings (data parallel, Ray workers) run in float32.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from azgym.lm.blocked import block_linears

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16")


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), by torch's probe or /proc/cpuinfo."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(p is not None for p in probes):
        return any(p() for p in probes if p is not None)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bfloat16 products are native on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve(precision: str, device: torch.device | str) -> torch.dtype:
    """The compute dtype ``precision`` means on ``device`` (``auto``: bfloat16 where native, else float32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return torch.float32
    if bf16_supported(device):
        return torch.bfloat16
    if precision == "bfloat16":
        logger.warning("precision bfloat16 on %s, which has no native bfloat16 products: expect it slower", device)
        return torch.bfloat16
    logger.info("precision auto: %s has no native bfloat16 products (AVX512-BF16/AMX or a bf16 GPU); float32", device)
    return torch.float32


def contiguous_head_input(model: nn.Module) -> None:
    """Make the output layer's input contiguous before its product (once per model). A pass that keeps only the
    last positions' logits hands the head a strided slice of the hidden states, and a bfloat16 product with such
    an input copies the whole [vocabulary x hidden] weight first: ~120 ms a row on this CPU instead of ~3 ms."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_azgym_contiguous", False):
        return
    head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))
    head._azgym_contiguous = True


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """Autocast to ``dtype`` on ``device`` for a float32 model's forward and backward; a no-op for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class FrozenCasts:
    """``dtype`` casts of a float32 model's frozen linear weights (a LoRA base), made once and used by the learner's
    passes under autocast instead of autocast's own casts, which it makes again at every pass (reading 4 bytes a
    weight and writing 2: on SmolLM2-135M ~10% of a learner step).

    Inside :meth:`swapped` each frozen ``nn.Linear`` holds its cast as ``weight`` (a plain tensor: the autograd
    graph keeps it for the backward pass after the swap ends); outside, the float32 parameters are back. A cast is
    remade when its weight is another tensor or changed in place (its version counter; an edit through
    ``.data`` is invisible to both: call :meth:`clear` after one). Weights shared with an embedding (tied output
    layers) keep autocast's cast: the embedding must stay float32. The swap changes the model for every thread:
    nothing else may run the model while the learner's pass does (the training loop is one thread).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.dtype = dtype
        embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        self._layers = [
            m
            for m in model.modules()
            if isinstance(m, nn.Linear) and not m.weight.requires_grad and id(m.weight) not in embedded
        ]
        self._casts: dict[int, tuple[torch.Tensor, tuple[int, int], torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self._layers)

    def clear(self) -> None:
        self._casts.clear()

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The frozen layers compute with their ``dtype`` casts for the duration."""
        originals = []
        try:
            for layer in self._layers:
                weight = layer._parameters["weight"]
                if weight.requires_grad:  # unfrozen since: it trains through its own parameter
                    continue
                made = self._casts.get(id(layer))
                if made is None or made[0] is not weight or made[1] != (weight.data_ptr(), weight._version):
                    made = (weight, (weight.data_ptr(), weight._version), weight.detach().to(self.dtype))
                    self._casts[id(layer)] = made
                originals.append((layer, weight))
                layer._parameters["weight"] = made[2]
            yield
        finally:
            for layer, weight in originals:
                layer._parameters["weight"] = weight


class InferenceCopy:
    """A ``dtype`` copy of a model's weights for the passes that do not train, LoRA adapters merged in.

    :meth:`refresh` rewrites the copy from the model (after its weights changed); the copy is always in eval
    mode and holds no gradients. A model already in ``dtype``, or one whose weights are quantized, needs no
    copy: :func:`inference_copy` returns None for it.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        self.source = model
        self.dtype = dtype
        self.model = _without_adapters(model).to(dtype).eval()  # built from the current weights: no refresh yet
        _float32_rotary(self.model, model)
        contiguous_head_input(self.model)
        block_linears(self.model)  # bfloat16 on a CPU: weights in oneDNN's blocked layout (azgym.lm.blocked)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._tied = _tied_names(self.model)
        self.refreshes = 0

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the source's current weights (adapters merged) into the copy, converting to its dtype."""
        state = merged_state(self.source)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        untied = sorted(set(missing) - self._tied)
        if unexpected or untied:
            raise RuntimeError(
                f"the {self.dtype} inference copy does not fit its model: missing {untied[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}"
            )
        block_linears(self.model)
        self.refreshes += 1


def inference_copy(model: nn.Module, dtype: torch.dtype) -> InferenceCopy | None:
    """An :class:`InferenceCopy` of ``model`` in ``dtype``, or None where the model runs as it is (already in that
    dtype, or quantized weights that cannot be copied)."""
    params = [p for p in model.parameters() if p.is_floating_point()]
    if dtype == torch.float32 or not params or all(p.dtype == dtype for p in params):
        return None
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_quantized", False):
        logger.info("a quantized model runs inference as it is (no %s copy)", dtype)
        return None
    return InferenceCopy(model, dtype)


def merged_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights by their plain (adapter-free) names, each LoRA layer's update added to its base weight."""
    if not hasattr(model, "peft_config"):
        return dict(model.state_dict())
    base = model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    adapted: set[str] = set()
    for name, module in base.named_modules():
        if not hasattr(module, "get_delta_weight") or not hasattr(module, "base_layer"):
            continue
        layer = module.get_base_layer()
        weight = layer.weight.detach()
        if not module.merged and not module.disable_adapters:
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter)
        state[f"{name}.weight"] = weight
        if getattr(layer, "bias", None) is not None:
            state[f"{name}.bias"] = layer.bias.detach()
        adapted.add(name)
    for key, value in base.state_dict().items():
        owner = key.split(".base_layer.")[0] if ".base_layer." in key else key.rsplit(".", 1)[0]
        if ".lora_" in key or owner in adapted:
            continue
        state[key] = value
    return state


def _without_adapters(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with its adapters merged and removed (the model itself is untouched)."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "peft_config"):
        clone = clone.merge_and_unload()
    return clone


def _float32_rotary(copy_: nn.Module, source: nn.Module) -> None:
    """Give the copy's rotary-embedding frequencies back their float32 values (``.to(dtype)`` rounded them to 8
    bits of mantissa: angles off by ~0.5 rad a few hundred positions in); transformers computes the angles in
    float32 from them either way."""
    base = source.get_base_model() if hasattr(source, "peft_config") else source
    originals = dict(base.named_buffers())
    for name, buffer in list(copy_.named_buffers()):
        owner, _, attr = name.rpartition(".")
        if attr in ("inv_freq", "original_inv_freq") and name in originals:
            value = originals[name].detach().to(device=buffer.device, dtype=torch.float32).clone()
            setattr(copy_.get_submodule(owner), attr, value)


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share their tensor with an earlier parameter (tied embeddings)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied
