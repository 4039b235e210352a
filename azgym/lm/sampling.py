"""Drawing one token per row from temperature-scaled logits, each row from its own generator."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_rows(
    scaled: torch.Tensor, generators: Sequence[torch.Generator | None], greedy: Sequence[bool]
) -> list[int]:
    """One token per row of ``scaled`` (temperature-scaled logits ``[B, V]``, on the CPU): the argmax for a
    greedy row, else a draw from softmax(row) by inverting its cumulative distribution at one uniform
    number from the row's own generator (so a row's sample does not depend on the batch around it). A row
    whose generator is None is skipped (-1). The softmax and cumulative sums run for all rows at once, in
    float64, so that each draw costs one random number instead of one per vocabulary entry.
    """
    out = [-1] * len(generators)
    rows = [pos for pos, g in enumerate(generators) if g is not None]
    argmax = [pos for pos in rows if greedy[pos]]
    sampled = [pos for pos in rows if not greedy[pos]]
    if argmax:
        for pos, token in zip(argmax, scaled[argmax].argmax(dim=-1).tolist(), strict=True):
            out[pos] = token
    if sampled:
        cdf = torch.softmax(scaled[sampled].double(), dim=-1).cumsum_(dim=-1)
        u = torch.cat([1.0 - torch.rand(1, generator=generators[pos], dtype=torch.float64) for pos in sampled])
        # the first token whose cumulative mass reaches u (in (0, 1]): a token of zero mass is never drawn; the
        # clamp keeps a row of non-finite logits (a NaN cdf) inside the vocabulary
        drawn = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
        for pos, token in zip(sampled, drawn.tolist(), strict=True):
            out[pos] = token
    return out
