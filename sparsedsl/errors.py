"""The errors sparsedsl raises for a user's mistakes.

`PatternError` is for the pattern language (it points at the source with a
caret); `InputError` is for the tensors and arguments of a call.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Source:
    """A piece of pattern text and where it came from (a path or "<string>")."""

    name: str
    text: str

    def line(self, lineno: int) -> str:
        lines = self.text.split("\n")  # as the lexer counts lines
        return lines[lineno - 1].removesuffix("\r") if 1 <= lineno <= len(lines) else ""


@dataclass(frozen=True)
class Span:
    """A region of a Source; lines and columns count from 1, end_col is exclusive."""

    source: Source
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.source.name}:{self.line}:{self.col}"

    def excerpt(self) -> str:
        """The source line and a caret (with tildes) under the span."""
        text = self.source.line(self.line).replace("\t", " ").replace("\r", " ").replace("\f", " ")
        if self.end_line == self.line and self.end_col > self.col:
            width = self.end_col - self.col
        else:
            width = max(1, len(text.rstrip()) - self.col + 1)
        width = max(1, min(width, len(text) - self.col + 2))
        col = self.col
        if len(text) > 100:  # show a window of a long line around the caret
            start = max(0, col - 50)
            text = ("..." if start else "") + text[start:start + 100] + ("..." if start + 100 < len(text) else "")
            col = col - start + (3 if start else 0)
            width = min(width, 100)
        return f"    {text}\n    {' ' * (col - 1)}^{'~' * (width - 1)}"


class SparseDSLError(ValueError):
    """Base class of the errors sparsedsl raises for bad input."""


class PatternError(SparseDSLError):
    """A mistake in a pattern: the message shows file:line:col, the line and a caret."""

    def __init__(self, message: str, span: Span | None = None, notes: tuple[str, ...] = ()):
        self.message = message
        self.span = span
        self.notes = tuple(notes)
        super().__init__(self._format())

    def _format(self) -> str:
        head = f"{self.span}: error: {self.message}" if self.span else f"error: {self.message}"
        parts = [head]
        if self.span is not None and self.span.source.text:
            parts.append(self.span.excerpt())
        parts.extend(f"note: {n}" for n in self.notes)
        return "\n".join(parts)


class InputError(SparseDSLError):
    """Tensors or arguments of a call that do not fit (shape, dtype, device, value)."""
