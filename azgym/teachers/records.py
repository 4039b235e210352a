"""What proposing deals in: a state to expand (:class:`ProposalRequest`), a proposed next step
(:class:`Candidate`) and a proposing model (:class:`Teacher`)."""

from __future__ import annotations

from dataclasses import dataclass

from azgym.lm.base import LanguageModel


@dataclass(frozen=True)
class Candidate:
    """One proposed next step."""

    text: str
    token_ids: tuple[int, ...]
    label: str  # "right" or "wrong": which prompt produced it
    logprob: float  # mean token log-prob under the plain solve prompt (the step's PRE)
    prior: float  # share of the state's prior mass
    finished: bool  # the teacher ended its response here (end of sequence)
    teacher: str  # name of the model that wrote it


@dataclass(frozen=True)
class ProposalRequest:
    """A state to expand: the problem, the response so far (token ids) and the budget left."""

    problem_id: str
    question: str
    response_ids: tuple[int, ...]
    max_tokens: int  # tokens the next step may use
    seed: int  # episode seed; mixed with the state so each state samples its own candidates


@dataclass
class Teacher:
    """One proposing model: ``style`` is ``"chat"`` (an instruct model with a chat template) or
    ``"few_shot"`` (a base model continuing a transcript of worked examples)."""

    lm: LanguageModel
    name: str = ""
    style: str = "chat"

    def __post_init__(self):
        self.name = self.name or self.lm.name
        if self.style not in ("chat", "few_shot"):
            raise ValueError(f"teacher {self.name}: style must be 'chat' or 'few_shot', got {self.style!r}")
