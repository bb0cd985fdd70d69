"""Fuzzing the front end: whatever the text, compile_pattern either succeeds or
raises sparsedsl.PatternError (never a lark, Python or torch error), and a
PatternError with a source span shows `name:LINE:COL:` and a caret line.

Inputs: random unicode, token soup from the language's tokens and keywords,
and mutations (deleted / duplicated / swapped characters and tokens) of the
shipped patterns/*.attn files and of printed random patterns. Deep nesting and
long chains must not escape as RecursionError.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

from hypothesis import given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsedsl as sd  # noqa: E402
from sparsedsl.atoms import ATOMS  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.testing import ENTRY, patterns, pattern_sources  # noqa: E402

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"
SHIPPED = [p.read_text(encoding="utf-8") for p in sorted(PATTERNS.glob("*.attn"))]

KEYWORDS = ["pattern", "import", "let", "heads", "true", "false", "not", "and", "or", "int", "bool"]
NAMES = sorted(ATOMS) + ["h", "H", "hk", "Hk", "q", "k", "min", "max", "abs", "x", "y", "p", "mean", "minmax",
                         "block", "size", "n", "causal_", "_"]
PUNCT = ["(", ")", "[", "]", "{", "}", ",", ":", "=", "=>", "|", "&", "-", "+", "*", "//", "%", "~",
         "<", "<=", ">", ">=", "==", "!=", ";", "\n", "\n", "#", "# comment\n", "@", "$", "\\", "'", ".",
         "/", "!", "\t", "\r\n"]
NUMBERS = ["0", "1", "2", "7", "64", "-1", "1_000", "00", "1__0", "99999999999999999999", "0x10", "1.5"]
STRINGS = ['"nope.attn"', '""', '"."', '"', '"a\nb"']
TOKENS = KEYWORDS + NAMES + PUNCT + NUMBERS + STRINGS

_TOKEN_RE = re.compile(r"\s+|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|[0-9][0-9_]*|\"[^\"\n]*\"|=>|//|<=|>=|==|!=|.", re.S)
_LOCATION = re.compile(r":(\d+):(\d+): error: ")
_CARET = re.compile(r"^ *\^~*$", re.M)
# Line breaks other than \n (and \r\n): lark counts lines by \n only, but
# Source.line() splits with str.splitlines(); see test_excerpt_with_form_feed.
_OTHER_BREAKS = re.compile("\r(?!\n)|[\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def check(text: str, **kwargs) -> sd.CompiledPattern | None:
    """Compile `text`; only PatternError may escape, and it must be well formed."""
    try:
        return sd.compile_pattern(text, **kwargs)
    except sd.PatternError as e:
        check_message(e, text)
        return None


def check_message(e: sd.PatternError, text: str) -> None:
    msg = str(e)
    assert e.message and e.message in msg
    if e.span is None:
        return
    first = msg.splitlines()[0]
    m = _LOCATION.search(first)
    assert m, f"no :LINE:COL: in {first!r}"
    line, col = int(m.group(1)), int(m.group(2))
    assert (line, col) == (e.span.line, e.span.col)
    assert line >= 1 and col >= 1
    if text:
        assert _CARET.search(msg), f"no caret line in:\n{msg}"
    if e.span.source.text != text or _OTHER_BREAKS.search(text):
        return  # an imported file; or a known bug with other line breaks
    lines = text.split("\n")
    assert line <= len(lines), f"line {line} past the end of the text"
    shown, caret = msg.split("\n")[1:3]
    src_line = lines[line - 1].removesuffix("\r").replace("\t", " ")
    assert col <= len(src_line) + 2, f"column {col} past the end of line {line}"
    if len(src_line) <= 100:
        assert shown == "    " + src_line, f"the excerpt is not line {line}:\n{msg}"
        assert caret.index("^") == 4 + col - 1
    else:  # a long line is shown as a window around the column, marked with "..."
        window = shown[4:]
        core = window.removeprefix("...").removesuffix("...")
        shift = 3 if window.startswith("...") else 0
        start = (col - 1) - (caret.index("^") - 4 - shift)  # where the window starts in the line
        assert start >= 0 and src_line[start:start + len(core)] == core, \
            f"the excerpt is not the window of line {line} around column {col}:\n{msg}"
        assert (start > 0) == window.startswith("...")


def as_source(text: str) -> str:
    # Text without a newline or "{" is taken for a file name; keep it source.
    return text if "\n" in text or "{" in text else text + "\n"


def roundtrip(c: sd.CompiledPattern) -> None:
    """A pattern that compiled prints to text that compiles to the same IR."""
    text = c.ir()
    assert sd.compile_pattern(text).root is c.root


# ---- strategies ----------------------------------------------------------------------------

def _tokens(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


@st.composite
def mutated(draw, text: str, max_mutations: int = 4) -> str:
    """`text` with a few character or token edits."""
    for _ in range(draw(st.integers(1, max_mutations))):
        if draw(st.booleans()):
            units = list(text)
        else:
            units = _tokens(text)
        if not units:
            units = [""]
        n = len(units)
        i = draw(st.integers(0, n - 1))
        j = draw(st.integers(i, min(n, i + 8)))
        how = draw(st.sampled_from(("delete", "duplicate", "swap", "insert", "replace")))
        if how == "delete":
            del units[i:j]
        elif how == "duplicate":
            units[i:i] = units[i:j]
        elif how == "swap":
            k = draw(st.integers(0, n - 1))
            units[i], units[k] = units[k], units[i]
        elif how == "insert":
            units.insert(i, draw(st.sampled_from(TOKENS)))
        else:
            units[i] = draw(st.sampled_from(TOKENS))
        text = "".join(units)
    return text


def shipped_mutations():
    return st.sampled_from(SHIPPED).flatmap(mutated)


def printed_mutations():
    return patterns(dynamic=True).map(to_text).flatmap(mutated)


def generated_mutations():
    return pattern_sources(dynamic=True).flatmap(mutated)


token_soup = st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(["", " ", " ", "\n"])),
                      max_size=40).map(lambda ts: "".join(t + s for t, s in ts))

wrapped_soup = token_soup.map(lambda s: f"pattern p() {{\n    {s}\n}}\n")


# ---- properties ----------------------------------------------------------------------------

# Parsing is cheap: more examples than the profile's default.
_MANY = settings(max_examples=settings().max_examples * 4)



@_MANY
@given(st.text(max_size=200))
def test_random_unicode(text):
    check(as_source(text))


@_MANY
@given(st.text(max_size=120).map(lambda s: "pattern p() {\n    " + s + "\n}\n"))
def test_random_unicode_in_a_pattern_body(text):
    check(text)


@_MANY
@given(st.text(st.characters(blacklist_characters="\n{"), max_size=60))
def test_short_text_is_taken_for_a_path(text):
    # No newline and no "{": compile_pattern takes it for a file name.
    check(text)


@_MANY
@given(st.one_of(token_soup, wrapped_soup))
def test_token_soup(text):
    note(repr(text))
    c = check(as_source(text))
    if c is not None:
        roundtrip(c)


@_MANY
@given(shipped_mutations())
def test_mutated_shipped_patterns(text):
    note(text)
    c = check(text)
    if c is not None:
        roundtrip(c)


@_MANY
@given(printed_mutations())
def test_mutated_printed_patterns(text):
    note(text)
    c = check(as_source(text))
    if c is not None:
        roundtrip(c)


@_MANY
@given(generated_mutations())
def test_mutated_generated_sources(text):
    note(text)
    check(as_source(text), pattern=ENTRY)


# ---- depth and length ------------------------------------------------------------------------

DEEP = 5000


def _body(expr: str) -> str:
    return f"pattern p() {{\n    {expr}\n}}\n"


@pytest.mark.parametrize("text", [
    _body("(" * DEEP + "causal" + ")" * DEEP),
    _body("(" * DEEP),
    _body("[" * DEEP),
    _body("where(" * DEEP + "true" + ")" * DEEP),
    _body("~" * DEEP + "causal"),
    _body("where(" + "-" * DEEP + "q < k)"),
    _body("where(" + "not " * DEEP + "q < k)"),
    _body("causal | " * 3000 + "causal"),
    _body("causal & " * 3000 + "causal"),
    _body("causal - " * 3000 + "causal"),
    _body("window(" + "1 + " * 3000 + "1)"),
    _body("where(" + "q + " * 3000 + "k < 0)"),
    _body("where(" + "q < k and " * 3000 + "q < k)"),
    _body("window(" + "h * " * 3000 + "1 + 1)"),
    "pattern p() {\n" + "".join(f"    let m{i} = ~m{i - 1}\n" if i else "    let m0 = causal\n"
                                 for i in range(3000)) + "    m2999\n}\n",
    "".join(f"pattern p{i}() {{ p{i - 1} | causal }}\n" if i else "pattern p0() { causal }\n"
            for i in range(300)),
], ids=["parens", "open-parens", "brackets", "where", "compl", "neg", "not", "union-chain", "inter-chain",
        "diff-chain", "int-chain", "sum-chain", "and-chain", "mul-chain", "let-chain", "pattern-chain"])
def test_deep_or_long_input_gives_pattern_error(text, request):
    limit = sys.getrecursionlimit()
    try:
        c = check(text, **({"pattern": "p299"} if text.startswith("pattern p0()") else {}))
    except RecursionError:  # pragma: no cover - the failure this test is about
        pytest.fail("RecursionError escaped compile_pattern")
    assert sys.getrecursionlimit() == limit
    if request.node.callspec.id in ("parens", "open-parens"):
        assert c is None, "expected a PatternError"


def test_deep_nesting_is_reported_with_a_caret():
    with pytest.raises(sd.PatternError) as info:
        sd.compile_pattern(_body("(" * DEEP + "causal" + ")" * DEEP))
    check_message(info.value, _body("(" * DEEP + "causal" + ")" * DEEP))
    assert info.value.span is not None


@pytest.mark.parametrize("text", [
    "pattern p() {\x0c\n    causal +\n}\n",  # \f is whitespace in the grammar
    "pattern p() {\r    causal | foo\n}\n",  # so is a lone \r
    "pattern p() {\x0c causal",
], ids=["form-feed", "carriage-return", "eof"])
def test_excerpt_with_form_feed(text):
    with pytest.raises(sd.PatternError) as info:
        sd.compile_pattern(text)
    e = info.value
    lines = text.split("\n")
    assert e.span.line <= len(lines)
    shown = lines[e.span.line - 1].removesuffix("\r")
    # the excerpt shows \f and a lone \r as spaces, so the caret lines up in a terminal
    assert str(e).split("\n")[1] == "    " + shown.replace("\r", " ").replace("\x0c", " ")


@pytest.mark.parametrize("text", ["(" * DEEP, "causal | " * 3000 + "causal", "a" * 300],
                         ids=["parens", "union-chain", "long-name"])
def test_long_text_without_newline_gives_pattern_error(text):
    with pytest.raises(sd.PatternError):
        sd.compile_pattern(text)
