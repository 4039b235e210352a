"""Every prompt azgym writes, in one place: the solve prompt (what the student is trained and
evaluated on), the teachers' "right" and "wrong" prompts, and the few-shot transcripts for base models.

The solve prompt is a chat of an optional system message and the question. Its system message is
chosen by a *prompt style*: ``"task"`` (the task's own, :data:`TASK_SYSTEM_PROMPTS`), ``"bare"`` (none:
the question alone, as a user would ask it), ``"example"`` (the task's own, then one worked example as
an earlier exchange of the chat, :data:`TASK_EXAMPLES`) or any other text, used as given. Teachers, the
environment's priors and process reward, the student's training samples and the evaluator all build
it with :func:`solve_prompt_ids`, so training and evaluation prompts match by construction.
"""

from __future__ import annotations

from typing import Protocol

RIGHT, WRONG = "right", "wrong"
RIGHT_PROMPTS = ("teacher", "solve")  # what right candidates are written under (see TeacherEnsemble)
PROMPT_STYLES = ("task", "bare", "example")

# A solve prompt's preamble: what comes before the question (a system message, or whole messages).
Preamble = str | tuple[dict[str, str], ...] | None

TASK_SYSTEM_PROMPTS: dict[str, str] = {
    "gsm8k": (
        "Solve the math word problem step by step, one short step per line. "
        "End with a final line of the form '#### <number>'."
    ),
    "arithmetic": "Compute the answer with a short calculation, then write a final line of the form '#### <number>'.",
    "countdown": (
        "Combine the given numbers with + - * / and parentheses, using each number exactly once, to reach "
        "the target. Reason briefly step by step, then give the equation alone on a final line as "
        "<answer>expression</answer>, for example <answer>(25 - 7) * 3</answer>."
    ),
}

# One worked example per task for the "example" prompt style, shown as an earlier user/assistant exchange.
# Small chat models copy a demonstrated answer format where they ignore a described one: SmolLM2-135M wrote
# an <answer> block in 0 of 32 greedy Countdown answers under the task prompt and in 30 of 32 with this example.
TASK_EXAMPLES: dict[str, tuple[str, str]] = {
    "gsm8k": (
        "Ana has 4 apples and buys 3 bags of 5 apples. How many apples does she have?",
        "The bags hold 3 * 5 = 15 apples.\nShe has 4 + 15 = 19 apples.\n#### 19",
    ),
    "arithmetic": ("What is 38 + 47?", "38 + 47 = 85.\n#### 85"),
    "countdown": (
        "Using the numbers [3, 7, 25], create an equation that equals 54. Use + - * / and each number exactly once.",
        "25 - 7 = 18, and 18 * 3 = 54.\n<answer>(25 - 7) * 3</answer>",
    ),
}

# the teachers' instructions (chat models): continue correctly, or with one plausible mistake
TEACHER_PROMPTS: dict[str, str] = {
    RIGHT: (
        "You are a careful math tutor. Continue the solution below correctly with its next step, one "
        "line. When the answer is known, write the final line as '#### <number>'."
    ),
    WRONG: (
        "You write flawed worked examples for students to correct. Continue the solution below with "
        "its next step, one line, but make one plausible mistake in it (a wrong operation or a wrong "
        "number) and carry on as if it were right."
    ),
}

# Base models (no chat template) continue a transcript: worked examples, then the question.
FEW_SHOT: dict[str, str] = {
    RIGHT: (
        "Worked solutions, one step per line, ending with '#### <answer>'.\n\n"
        "Question: Ana has 4 apples and buys 3 bags of 5 apples. How many apples does she have?\n"
        "Answer: The bags hold 3 * 5 = 15 apples.\nShe has 4 + 15 = 19 apples.\n#### 19\n\n"
        "Question: What is 38 + 47?\nAnswer: 38 + 47 = 85.\n#### 85\n\n"
    ),
    WRONG: (
        "Worked solutions with one plausible mistake each, one step per line, ending with '#### <answer>'.\n\n"
        "Question: Ana has 4 apples and buys 3 bags of 5 apples. How many apples does she have?\n"
        "Answer: The bags hold 3 * 5 = 18 apples.\nShe has 4 + 18 = 22 apples.\n#### 22\n\n"
        "Question: What is 38 + 47?\nAnswer: 38 + 47 = 75.\n#### 75\n\n"
    ),
}

# the model terminal checker's question (see azgym.terminal)
COMPLETE_QUESTION = (
    "Question: {question}\n\nResponse so far:\n{response}\n\n"
    "Has this response reached a complete final answer to the question? Reply with yes or no."
)


class ChatModel(Protocol):
    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]: ...


def system_prompt(task: str, style: str = "task") -> Preamble:
    """The solve prompt's preamble for ``task`` under prompt ``style`` (see the module docs): its system
    message, or with ``"example"`` the messages before the question.

    >>> system_prompt("arithmetic", "bare") is None
    True
    >>> system_prompt("gsm8k", "Think.")
    'Think.'
    >>> [m["role"] for m in system_prompt("countdown", "example")]
    ['system', 'user', 'assistant']
    """
    if style == "example":
        if task not in TASK_EXAMPLES:
            raise ValueError(f"no worked example for task {task!r}; known: {', '.join(sorted(TASK_EXAMPLES))}")
        question, answer = TASK_EXAMPLES[task]
        shown = ({"role": "user", "content": question}, {"role": "assistant", "content": answer})
        return ({"role": "system", "content": system_prompt(task, "task")}, *shown)
    if style == "task":
        if task not in TASK_SYSTEM_PROMPTS:
            raise ValueError(f"no solve prompt for task {task!r}; known: {', '.join(sorted(TASK_SYSTEM_PROMPTS))}")
        return TASK_SYSTEM_PROMPTS[task]
    if style == "bare":
        return None
    if not style.strip():
        raise ValueError("an empty system prompt: pass 'task', 'bare' or the system message text")
    return style


def solve_messages(system: Preamble, question: str) -> list[dict[str, str]]:
    """The chat of the solve prompt: the preamble (a system message, or messages), then the question.

    >>> solve_messages(None, "What is 2 + 2?")
    [{'role': 'user', 'content': 'What is 2 + 2?'}]
    """
    user = [{"role": "user", "content": question}]
    if system is None:
        return user
    return [{"role": "system", "content": system}, *user] if isinstance(system, str) else [*system, *user]


def solve_prompt_ids(lm: ChatModel, system: Preamble, question: str) -> list[int]:
    """Token ids of the solve prompt in ``lm``'s chat template, ending where the response starts."""
    return lm.chat_prompt(solve_messages(system, question))


def teacher_messages(label: str, question: str) -> list[dict[str, str]]:
    """The chat a chat-model teacher continues for a ``"right"`` or ``"wrong"`` candidate."""
    return solve_messages(TEACHER_PROMPTS[label], question)


def few_shot_prompt(label: str, question: str) -> str:
    """The transcript a base-model teacher continues (the response so far follows it)."""
    return f"{FEW_SHOT[label]}Question: {question}\nAnswer:"
