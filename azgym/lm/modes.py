"""Train / eval mode switching that restores what it found, and the decorator that runs a backend method
without gradients in eval mode (a learner and the backends share one model's weights)."""

from __future__ import annotations

import contextlib
import functools

import torch


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
