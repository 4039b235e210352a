"""Language-model backends behind one small protocol (see :mod:`azgym.lm.base`)."""

from azgym.lm.base import Generation, LanguageModel, Prompt
from azgym.lm.hf import HFBackend

__all__ = ["Generation", "HFBackend", "LanguageModel", "Prompt"]
