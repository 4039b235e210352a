"""The memory-bandwidth bound beside a measured throughput (the CPU-limit issue's roofline).

Decoding one token for a batch of B rows reads every weight once and each row's keys and values so far, so on a
machine whose memory moves ``bandwidth`` bytes/s no decoder can beat ``B * bandwidth / bytes_per_step`` tokens/s
(compute, caches and overlap aside: a bound, not a prediction). A learner step reads the weights at least three
times per micro-batch (forward, and backward through the frozen base for the input gradients and for the
trainable weights) and the optimizer reads and writes its state. The bandwidth is measured in the same run: the
best of a few copies of a tensor much larger than the caches (bytes read + bytes written over the seconds).
"""

from __future__ import annotations

import time

import torch


def measured_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second this machine copies between two float32 tensors of ``megabytes`` (read + write)."""
    source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    target.copy_(source)  # touch the pages once
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() * source.element_size() / best


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers as they are stored (their dtypes)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def kv_bytes_per_token(config, dtype_bytes: int) -> int:
    """Bytes of keys and values one token adds to a decoder's cache (all layers)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * dtype_bytes


def decode_bound(weight_bytes: int, kv_per_token: int, batch: int, context: int, bandwidth: float) -> float:
    """Tokens/s no decoder can beat: each step reads the weights and ``batch`` caches of ``context`` tokens.

    >>> decode_bound(weight_bytes=500, kv_per_token=10, batch=4, context=5, bandwidth=700.0)
    4.0
    """
    return batch * bandwidth / (weight_bytes + batch * context * kv_per_token)


def train_bound(weight_bytes: int, trainable_bytes: int, micro_batches: int, bandwidth: float) -> float:
    """Learner steps/s bounded by memory traffic alone: three reads of the weights per micro-batch, and AdamW
    reading and writing the trainable weights, their gradients and two moments (about ten times their bytes)
    once per step. Activations are left out: a floor on the traffic, so a ceiling on the rate.

    >>> train_bound(weight_bytes=100, trainable_bytes=10, micro_batches=2, bandwidth=700.0)
    1.0
    """
    return bandwidth / (3 * weight_bytes * micro_batches + 10 * trainable_bytes)


def line(what: str, measured: float, bound: float, unit: str, bandwidth: float) -> str:
    """``roofline: <what> <bound> <unit> at <bandwidth> GB/s measured; reached <measured/bound>``."""
    return (
        f"roofline ({what}): {bound:,.1f} {unit} at {bandwidth / 1e9:.1f} GB/s measured in this run; "
        f"reached {measured / bound:.1%}"
    )
