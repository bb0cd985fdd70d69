"""Text -> syntax tree (language/ast.py), with every error as a PatternError."""
from __future__ import annotations

import contextvars
import functools

import lark
from lark import Token, Transformer_NonRecursive, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from ..errors import PatternError, Source, Span
from ..resources import data_dir
from . import ast

# A newline next to one of these tokens continues the statement.
_BINARY = {"|", "&", "-", "+", "*", "//", "%", "<", "<=", ">", ">=", "==", "!=", "and", "or"}
_CONTINUE_AFTER = _BINARY | {"~", "not", "(", "[", "{", ",", "=", "=>", ":"}
_CONTINUE_BEFORE = _BINARY | {")", "]", "{", "}", ",", "=>"}
_MAX_NESTING = 100
# The source being parsed, for the post-lexer's errors: the Lark instance (and its
# post-lexer) is shared by every thread, so the source cannot be stored on it.
_SOURCE: contextvars.ContextVar[Source | None] = contextvars.ContextVar("sparsedsl_parse_source", default=None)


class _Newlines:
    """Post-lexer: keeps a newline only where it can end a statement."""

    always_accept = ("_NL",)

    def process(self, stream):
        depth = 0
        prev = None
        pending = None
        for tok in stream:
            if tok.type == "_NL":
                if pending is None and depth == 0 and prev is not None and _value(prev) not in _CONTINUE_AFTER:
                    pending = tok
                continue
            if pending is not None:
                if _value(tok) not in _CONTINUE_BEFORE:
                    yield pending
                pending = None
            value = _value(tok)
            if value in ("(", "["):
                depth += 1
                if depth > _MAX_NESTING:
                    span = _token_span(tok, _SOURCE.get())
                    raise PatternError(f"brackets nested more than {_MAX_NESTING} deep", span)
            elif value in (")", "]"):
                depth = max(0, depth - 1)
            prev = tok
            yield tok
        if pending is not None:
            yield pending


def _value(tok: Token) -> str:
    return "" if tok.type in ("NAME", "INT", "STRING") else str(tok)


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    return lark.Lark.open(
        str(data_dir("grammar") / "attn.lark"),
        parser="lalr",
        lexer="basic",
        propagate_positions=True,
        postlex=_Newlines(),
        maybe_placeholders=True,
    )


def _span(meta, source: Source) -> Span:
    return Span(source, meta.line, meta.column, meta.end_line, meta.end_column)


def _token_span(tok: Token, source: Source | None) -> Span | None:
    if source is None or tok.line is None:
        return None
    return Span(source, tok.line, tok.column, tok.end_line or tok.line, tok.end_column or tok.column + 1)


@v_args(meta=True, inline=True)
class _ToAst(Transformer_NonRecursive):
    def __init__(self, source: Source):
        super().__init__()
        self.source = source

    def _s(self, meta) -> Span:
        return _span(meta, self.source)

    def start(self, meta, *items):
        imports = tuple(i for i in items if isinstance(i, ast.Import))
        patterns = tuple(i for i in items if isinstance(i, ast.PatternDef))
        return ast.Module(self.source, imports, patterns)

    def import_stmt(self, meta, path):
        return ast.Import(str(path)[1:-1], self._s(meta))

    def pattern_def(self, meta, name, *rest):
        *params, body = rest
        lets, expr = body
        return ast.PatternDef(str(name), tuple(p for p in params if p is not None), lets, expr, self._s(meta))

    def param(self, meta, name, type_, default):
        return ast.Param(str(name), str(type_), default, self._s(meta))

    def body(self, meta, *items):
        lets = tuple(i for i in items if isinstance(i, ast.Let))
        rest = [i for i in items if i is not None and not isinstance(i, ast.Let)]
        if len(rest) == 1 and isinstance(rest[0], ast.Expr):
            return lets, rest[0]
        return lets, ast.HeadSwitch(self._s(meta), tuple(rest))

    def let_stmt(self, meta, name, value):
        return ast.Let(str(name), value, self._s(meta))

    def branch(self, meta, sel, body):
        kind, start, stop = sel
        return ast.Branch(kind, start, stop, body, self._s(meta))

    def sel_all(self, meta):
        return ("all", None, None)

    def sel_index(self, meta, expr):
        return ("index", expr, None)

    def sel_slice(self, meta, start, stop):
        return ("slice", start, stop)

    def head_switch(self, meta, *branches):
        return ast.HeadSwitch(self._s(meta), tuple(b for b in branches if b is not None))

    def _bin(op):  # noqa: N805 - a helper that makes methods
        def method(self, meta, left, right):
            return ast.BinOp(self._s(meta), op, left, right)

        return method

    bool_or = _bin("or")
    bool_and = _bin("and")
    union = _bin("|")
    sub = _bin("-")
    add = _bin("+")
    inter = _bin("&")
    mul = _bin("*")
    floordiv = _bin("//")
    mod = _bin("%")

    def bool_not(self, meta, operand):
        return ast.UnaryOp(self._s(meta), "not", operand)

    def neg(self, meta, operand):
        return ast.UnaryOp(self._s(meta), "-", operand)

    def complement(self, meta, operand):
        return ast.UnaryOp(self._s(meta), "~", operand)

    def compare(self, meta, *items):
        return ast.Compare(self._s(meta), tuple(str(t) for t in items[1::2]), tuple(items[0::2]))

    def number(self, meta, tok):
        return ast.Num(self._s(meta), int(str(tok).replace("_", "")))

    def true(self, meta):
        return ast.BoolLit(self._s(meta), True)

    def false(self, meta):
        return ast.BoolLit(self._s(meta), False)

    def name(self, meta, tok):
        return ast.Name(self._s(meta), str(tok))

    def call(self, meta, func, *args):
        pos = tuple(a for a in args if isinstance(a, ast.Expr))
        kws = tuple(a for a in args if isinstance(a, ast.Keyword))
        return ast.Call(self._s(meta), str(func), pos, kws)

    def posarg(self, meta, expr):
        return expr

    def kwarg(self, meta, name, expr):
        return ast.Keyword(str(name), expr, self._s(meta))


def _describe(names) -> str:
    """Readable list of what the parser expected, from lark's terminal names."""
    terminals = {t.name: t for t in _lark().terminals}
    words = set()
    for n in names:
        t = terminals.get(n)
        if n == "_NL":
            words.add("a new line")
        elif n == "$END":
            words.add("end of file")
        elif t is not None and t.pattern.type == "str":
            words.add(f"'{t.pattern.value}'")
        else:
            words.add({"NAME": "a name", "INT": "an integer", "STRING": "a quoted path",
                       "COMP_OP": "a comparison"}.get(n, n.lower()))
    order = sorted(words, key=lambda w: (not w.startswith("'"), w))
    if len(order) > 8:
        order = order[:8] + ["..."]
    return ", ".join(order)


def _token_text(tok: Token) -> str:
    if tok.type == "_NL":
        return "end of line" if str(tok) != ";" else "';'"
    if tok.type == "$END":
        return "end of file"
    return repr(str(tok))


def parse(text: str, name: str = "<string>") -> ast.Module:
    """Parse .attn source text; any problem raises PatternError."""
    source = Source(name, text)
    parser = _lark()
    token = _SOURCE.set(source)  # for nesting errors
    try:
        tree = parser.parse(text)
    except UnexpectedToken as e:
        tok = e.token
        if tok.type == "$END":
            span = _end_span(source)
            raise PatternError(f"unexpected end of file; expected {_describe(e.expected)}", span) from None
        raise PatternError(
            f"unexpected {_token_text(tok)}; expected {_describe(e.expected)}", _token_span(tok, source)
        ) from None
    except UnexpectedCharacters as e:
        span = Span(source, e.line, e.column, e.line, e.column + 1)
        raise PatternError(f"unexpected character {text[e.pos_in_stream]!r}", span) from None
    except UnexpectedEOF as e:
        raise PatternError(f"unexpected end of file; expected {_describe(e.expected)}", _end_span(source)) from None
    except UnexpectedInput as e:  # pragma: no cover - other lark input errors
        raise PatternError(f"syntax error: {e}", None) from None
    finally:
        _SOURCE.reset(token)
    try:
        return _ToAst(source).transform(tree)
    except VisitError as e:
        if isinstance(e.orig_exc, PatternError):
            raise e.orig_exc from None
        raise


def _end_span(source: Source) -> Span:
    lines = [line.removesuffix("\r") for line in source.text.split("\n")]
    if len(lines) > 1 and not lines[-1]:  # a final newline: point at the end of the last line
        lines.pop()
    return Span(source, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2)
