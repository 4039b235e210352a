"""Terminal checkers: does a step end the episode?

The rule (default) ends an episode on an answer marker in the step (``#### <number>``,
``\\boxed{}``) or when the teacher ended its response (end of sequence). The model-based checker
keeps the rule and also asks a small model whether the response so far is a complete answer,
comparing its log-probs of "yes" and "no"; answers are cached per response.
"""

from __future__ import annotations

import math
from collections import OrderedDict

from azgym.lm.base import LanguageModel
from azgym.prompts import COMPLETE_QUESTION
from azgym.teachers import Candidate


class RuleTerminalChecker:
    """Terminal on an answer marker in the step or on end of sequence."""

    name = "rule"

    def __init__(self, task):
        self.task = task

    def is_terminal(self, question: str, response_ids: tuple[int, ...], step: Candidate) -> bool:
        return step.finished or self.task.has_answer_marker(step.text)


class ModelTerminalChecker(RuleTerminalChecker):
    """The rule, or a model's "yes" to "is this response complete?" (P(yes) above ``threshold``).

    Args:
        lm: the model asked (any :class:`~azgym.lm.LanguageModel`; the env's scoring model by default).
        task: the task (for the rule).
        threshold: P(yes) / (P(yes) + P(no)) above which the response counts as complete.
        cache_size: responses whose answer is remembered.
    """

    name = "model"

    def __init__(self, lm: LanguageModel, task, *, threshold: float = 0.5, cache_size: int = 4096):
        super().__init__(task)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.lm, self.threshold, self.cache_size = lm, threshold, cache_size
        self._answers: OrderedDict[tuple[str, tuple[int, ...]], float] = OrderedDict()
        self._yes, self._no = lm.encode("yes"), lm.encode("no")

    def is_terminal(self, question: str, response_ids: tuple[int, ...], step: Candidate) -> bool:
        return (
            super().is_terminal(question, response_ids, step)
            or self.p_complete(question, response_ids) > self.threshold
        )

    def p_complete(self, question: str, response_ids: tuple[int, ...]) -> float:
        """The model's probability that the response is a complete answer (yes vs no)."""
        key = (question, tuple(response_ids))
        if key not in self._answers:
            text = COMPLETE_QUESTION.format(question=question, response=self.lm.decode(response_ids))
            prompt = self.lm.chat_prompt([{"role": "user", "content": text}])
            yes, no = self.lm.score([prompt, prompt], [self._yes, self._no])
            margin = float(yes.sum() - no.sum())
            self._answers[key] = 1.0 / (1.0 + math.exp(-max(min(margin, 50.0), -50.0)))
            while len(self._answers) > self.cache_size:
                self._answers.popitem(last=False)
        return self._answers[key]


def make_terminal_checker(terminal, lm: LanguageModel, task) -> RuleTerminalChecker:
    """The checker ``terminal`` names (``"rule"`` / ``"model"``), or ``terminal`` itself if it is one."""
    if isinstance(terminal, RuleTerminalChecker):
        return terminal
    if terminal == "rule":
        return RuleTerminalChecker(task)
    if terminal == "model":
        return ModelTerminalChecker(lm, task)
    raise ValueError(f"unknown terminal checker {terminal!r}; use 'rule', 'model' or a RuleTerminalChecker")
