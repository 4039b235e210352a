"""The student: a causal LM with a value head (LoRA, optional 4-bit), and its value function."""

from agents.student.model import Forward, Student, StudentConfig, token_logprobs
from agents.student.value import LMValueFunction, ValueHead

__all__ = ["Forward", "LMValueFunction", "Student", "StudentConfig", "ValueHead", "token_logprobs"]
