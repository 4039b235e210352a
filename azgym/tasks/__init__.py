"""Problem sources and graders: pure functions, no model code."""

from azgym.tasks import arithmetic, gsm8k
from azgym.tasks.base import DataError, Problem

__all__ = ["DataError", "Problem", "arithmetic", "gsm8k"]
