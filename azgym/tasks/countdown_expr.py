"""Countdown expressions: a hand-written tokenizer and recursive-descent parser over Fractions.

Model text is never executed (no ``eval``, ``exec`` or ``ast``): the tokenizer knows integers,
``+ - * /`` (also ``×``, ``÷``, ``−``), parentheses and whitespace, plus a few operators it reads only
to name them as illegal (``**``, ``^``, ``%``, ``//``); anything else (names, calls, attributes,
quotes, decimals) is a syntax error. An expression holding an illegal operator, or a unary sign, is
parsed but never evaluated. Limits keep every call fast: at most :data:`MAX_CHARS` characters,
:data:`MAX_DEPTH` levels of nesting, and no literal or intermediate value (numerator or denominator)
beyond :data:`MAX_MAGNITUDE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

MAX_CHARS = 200
MAX_DEPTH = 50
MAX_MAGNITUDE = 10**12
LEGAL_OPERATORS = ("+", "-", "*", "/")
ILLEGAL_OPERATORS = ("**", "//", "^", "%")  # read only to be named in the error
_ALIASES = {"×": "*", "÷": "/", "−": "-", "–": "-", "·": "*", "∗": "*"}


class ExpressionError(ValueError):
    """Text that is not an expression (or breaks a limit); the message says why, in words."""


@dataclass(frozen=True)
class Parsed:
    """A parsed expression.

    ``numbers``: the integer literals in reading order; ``illegal``: operators outside ``+ - * /``
    (a unary sign reads ``"unary -"``); ``value``: the exact value, ``None`` when not evaluated
    (an illegal operator) or not computable (``error`` says why: division by zero, too large).
    """

    numbers: tuple[int, ...]
    illegal: tuple[str, ...]
    value: Fraction | None
    error: str | None


def tokenize(text: str) -> list[str]:
    """Split ``text`` into integer and operator tokens.

    >>> tokenize("(25 - 7) × 3")
    ['(', '25', '-', '7', ')', '*', '3']
    >>> tokenize("2**3")
    ['2', '**', '3']
    """
    if len(text) > MAX_CHARS:
        raise ExpressionError(f"the expression is {len(text)} characters long, more than the {MAX_CHARS} allowed")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        char = _ALIASES.get(text[i], text[i])
        if char.isspace():
            i += 1
        elif "0" <= char <= "9":
            start = i
            while i < len(text) and "0" <= text[i] <= "9":
                i += 1
            if i < len(text) and text[i] == ".":
                raise ExpressionError(f"{text[start : i + 1]!r}...: only whole numbers are allowed")
            if i - start > 13 or int(text[start:i]) > MAX_MAGNITUDE:
                raise ExpressionError(f"the number {text[start:i][:20]} is larger than 10**12")
            tokens.append(text[start:i])
        elif text.startswith(("**", "//"), i):
            tokens.append(text[i : i + 2])
            i += 2
        elif char in "+-*/^%()":
            tokens.append(char)
            i += 1
        else:
            raise ExpressionError(
                f"unexpected character {text[i]!r} at position {i}: only numbers, + - * / and parentheses are allowed"
            )
    return tokens


def parse(text: str) -> Parsed:
    """Parse and (when every operator is legal) evaluate ``text``; raises :class:`ExpressionError`.

    >>> parse("(25 - 7) * 3 ÷ 2").value
    Fraction(27, 1)
    >>> parse("9**9**9").illegal, parse("9**9**9").value
    (('**', '**'), None)
    """
    tokens = tokenize(text)
    if not tokens:
        raise ExpressionError("the expression is empty")
    parser = _Parser(tokens)
    tree = parser.expression(0)
    if parser.pos < len(tokens):
        raise ExpressionError(f"unexpected {tokens[parser.pos]!r} after a complete expression")
    numbers, illegal = tuple(parser.numbers), tuple(parser.illegal)
    if illegal:
        return Parsed(numbers, illegal, None, None)
    try:
        return Parsed(numbers, illegal, _evaluate(tree), None)
    except ExpressionError as err:
        return Parsed(numbers, illegal, None, str(err))


class _Parser:
    """expression := term (('+' | '-') term)*; term := unary (('*' | '/' | '//' | '%') unary)*;
    unary := ('+' | '-') unary | power; power := atom (('**' | '^') unary)?; atom := number | '(' expression ')'.
    Trees are tuples: ``("num", int)``, ``("neg", op, x)``, ``(op, left, right)``."""

    def __init__(self, tokens: list[str]):
        self.tokens, self.pos = tokens, 0
        self.numbers: list[int] = []
        self.illegal: list[str] = []

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ExpressionError("the expression ends too early (a number or '(' is missing)")
        self.pos += 1
        return token

    def expression(self, depth: int):
        if depth > MAX_DEPTH:
            raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} levels deep")
        tree = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            tree = (op, tree, self.term(depth))
        return tree

    def term(self, depth: int):
        tree = self.unary(depth)
        while self.peek() in ("*", "/", "//", "%"):
            op = self.take()
            if op not in LEGAL_OPERATORS:
                self.illegal.append(op)
            tree = (op, tree, self.unary(depth))
        return tree

    def unary(self, depth: int):
        if self.peek() in ("+", "-"):
            if depth > MAX_DEPTH:
                raise ExpressionError(f"the expression is nested more than {MAX_DEPTH} levels deep")
            op = self.take()
            self.illegal.append(f"unary {op}")
            return ("neg", op, self.unary(depth + 1))
        tree = self.atom(depth)
        if self.peek() in ("**", "^"):
            op = self.take()
            self.illegal.append(op)
            tree = (op, tree, self.unary(depth + 1))
        return tree

    def atom(self, depth: int):
        token = self.take()
        if token == "(":
            tree = self.expression(depth + 1)
            if self.peek() != ")":
                raise ExpressionError("a '(' is never closed")
            self.take()
            return tree
        if token.isdigit():
            self.numbers.append(int(token))
            return ("num", int(token))
        raise ExpressionError(f"expected a number or '(' but found {token!r}")


def _evaluate(tree) -> Fraction:
    """The exact value of a tree of legal operators (only ever called without illegal ones)."""
    kind = tree[0]
    if kind == "num":
        return Fraction(tree[1])
    left, right = _evaluate(tree[1]), _evaluate(tree[2])
    if kind == "+":
        value = left + right
    elif kind == "-":
        value = left - right
    elif kind == "*":
        value = left * right
    elif kind == "/":
        if right == 0:
            raise ExpressionError("division by zero")
        value = left / right
    else:  # pragma: no cover - parse() never evaluates an illegal operator
        raise ExpressionError(f"operator {kind!r} is not allowed")
    if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
        raise ExpressionError("an intermediate value is larger than 10**12")
    return value
