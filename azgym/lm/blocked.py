"""Matrix products with the weight in oneDNN's blocked layout: bit-identical to ``F.linear``, faster on a CPU.

``torch.ops.mkldnn._reorder_linear_weight`` lays a bfloat16 weight out the way oneDNN's kernels read it (what
PyTorch's compiler does to frozen weights on a CPU); ``torch.ops.mkldnn._linear_pointwise`` multiplies with it.
On this 2-core CPU (``lscpu``: AVX512-BF16, AMX), 120 distinct SmolLM2-135M-shaped products read their weights at
~14 GB/s blocked against ~10 GB/s plain: 1.3-1.4x at 1-16 rows, 1.3x at 64, 1.14x at 320, the results equal
bit for bit. Only weights that do not change can be blocked (blocking copies them): the inference copy re-blocks
at every refresh (:func:`block_linears`), the lean decoder at every rebuild.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKED_ROWS = 8  # the row count oneDNN lays the weights out for (any count multiplies correctly)


def blocked_available() -> bool:
    """Whether this PyTorch has oneDNN's blocked linear ops and this CPU runs their bfloat16 path."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return supported is None or bool(supported())


def blocks(weight: torch.Tensor) -> bool:
    """Whether ``weight`` is one the blocked kernels take: bfloat16, on a CPU, with oneDNN present."""
    return weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and blocked_available()


class Product:
    """``x @ weight.T + bias``, the weight blocked where :func:`blocks` allows (a copy: make a new product after
    the weight changes), plain ``F.linear`` elsewhere."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        weight = weight.detach()
        self.blocked = blocks(weight)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(weight, BLOCKED_ROWS) if self.blocked else weight
        self.bias = None if bias is None else bias.detach().clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.blocked:
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.weight, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class BlockedLinear(nn.Linear):
    """An ``nn.Linear`` of a model that does not train, computing through a :class:`Product` of its weight (its
    parameters stay as they are, for state dicts and tied weights); :meth:`reblock` after they change."""

    def reblock(self) -> None:
        self._product = Product(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._product(x)


def block_linears(model: nn.Module) -> int:
    """Make every bfloat16 ``nn.Linear`` of ``model`` on a CPU a :class:`BlockedLinear` (or re-block it if it is
    one): after building the model and after every change to its weights. The number blocked."""
    count = 0
    for module in model.modules():
        if type(module) in (nn.Linear, BlockedLinear) and blocks(module.weight):
            module.__class__ = BlockedLinear
            module.reblock()
            count += 1
    return count
