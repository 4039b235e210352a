"""Problem sources and graders: pure functions, no model code."""

from azgym.tasks import gsm8k
from azgym.tasks.base import DataError, Problem

__all__ = ["DataError", "Problem", "gsm8k"]
