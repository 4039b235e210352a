"""Drawing one token per row of a decode step's logits, each row from its own generator, on the logits' device.

Only the drawn tokens and their log-probs (two numbers a row) cross to the host: the softmax, the cumulative
sums, the argmax and the log-prob lookups run where the logits are. The per-row generators live on the host
(a sample must not depend on the batch around it, nor on the device), so each row's one uniform number is
drawn there and moved over.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_rows(
    logits: torch.Tensor,
    generators: Sequence[torch.Generator | None],
    greedy: Sequence[bool],
    temperatures: torch.Tensor | None = None,
) -> tuple[list[int], list[float]]:
    """One token per row of ``logits`` (``[B, V]``, float32, any device) and its log-prob under softmax(row).

    A greedy row takes its argmax; any other row draws from softmax(row / temperature) by inverting its
    cumulative distribution at one uniform number from the row's own generator. The softmax and cumulative
    sums run for all sampled rows at once, in float64, so a draw costs one random number instead of one per
    vocabulary entry. A row whose generator is None is skipped (token -1, log-prob 0). The log-prob is the
    token's under the unscaled logits (temperature 1): what the behaviour policy is scored by.
    """
    count = len(generators)
    rows = [pos for pos, g in enumerate(generators) if g is not None]
    if not rows:
        return [-1] * count, [0.0] * count
    device = logits.device
    tokens = torch.full((count,), -1, dtype=torch.long, device=device)
    argmax = [pos for pos in rows if greedy[pos]]
    sampled = [pos for pos in rows if not greedy[pos]]
    if argmax:
        index = torch.tensor(argmax, device=device)
        tokens[index] = logits[index].argmax(dim=-1)
    if sampled:
        index = torch.tensor(sampled, device=device)
        scaled = logits[index] if temperatures is None else logits[index] / temperatures.reshape(-1, 1)[index]
        cdf = torch.softmax(scaled.double(), dim=-1).cumsum_(dim=-1)
        u = torch.cat([1.0 - torch.rand(1, generator=generators[pos], dtype=torch.float64) for pos in sampled])
        # the first token whose cumulative mass reaches u (in (0, 1]): a token of zero mass is never drawn; the
        # clamp keeps a row of non-finite logits (a NaN cdf) inside the vocabulary
        target = (u.to(device) * cdf[:, -1]).unsqueeze(-1)
        tokens[index] = torch.searchsorted(cdf, target).squeeze(-1).clamp_(max=cdf.shape[-1] - 1)
    picked = logits.gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    out = torch.stack([tokens.double(), picked.double()]).cpu().tolist()  # the step's one transfer to the host
    return [int(t) for t in out[0]], [0.0 if g is None else lp for g, lp in zip(generators, out[1], strict=True)]


def stop_window(stop: Sequence[str]) -> int:
    """Trailing tokens whose text holds any stop string that the newest token completes: a token is at least
    one byte and a character at most four, plus a margin so that a character cut at the window's start (a
    replacement mark) cannot touch a match.

    >>> stop_window(["\\n\\n", "Answer:"])
    32
    """
    return 4 * max((len(s) for s in stop), default=0) + 4
