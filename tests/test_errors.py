"""Every mistake a user can make gets a clear error.

Pattern-language mistakes raise `sparsedsl.PatternError` (a ValueError) whose
text is

    FILE:LINE:COL: error: MESSAGE
        <the offending source line>
        <spaces>^~~~

and says what was expected. Each test below states the line and column it
expects (counted by hand, or found with `_at` from a unique piece of the
source) and a key phrase of the message. Bad tensors and arguments of a call
raise `sparsedsl.InputError` with a precise message.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

sd = pytest.importorskip("sparsedsl")

C = sd.compile_pattern


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _at(src: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, col), 1-based, of the nth occurrence of `needle` in `src`."""
    pos = -1
    for _ in range(nth + 1):
        pos = src.index(needle, pos + 1)
    line = src.count("\n", 0, pos) + 1
    col = pos - (src.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _check_format(err: sd.PatternError, src: str, line: int, col: int, name: str = "<string>") -> list[str]:
    """The header names name:line:col, then the source line, then a caret under col."""
    text = str(err)
    parts = text.split("\n")
    assert parts[0].startswith(f"{name}:{line}:{col}: error: "), text
    src_line = src.splitlines()[line - 1].replace("\t", " ")  # a tab counts as one column
    assert parts[1] == "    " + src_line, text
    caret = parts[2]
    assert caret[:4 + col - 1] == " " * (4 + col - 1), text
    assert caret[4 + col - 1] == "^", text
    assert set(caret[4 + col:]) <= {"~"}, text
    return parts


def pattern_error(src: str, line: int, col: int, *phrases: str, **params) -> sd.PatternError:
    """Compile `src`, expect a PatternError at line:col whose text contains every phrase."""
    with pytest.raises(sd.PatternError) as info:
        C(src, **params)
    err = info.value
    _check_format(err, src, line, col)
    for phrase in phrases:
        assert phrase in str(err), f"{phrase!r} not in:\n{err}"
    return err


def at_error(src: str, needle: str, *phrases: str, nth: int = 0, **params) -> sd.PatternError:
    line, col = _at(src, needle, nth)
    return pattern_error(src, line, col, *phrases, **params)


def test_error_classes():
    assert issubclass(sd.PatternError, ValueError)
    assert issubclass(sd.InputError, ValueError)
    assert issubclass(sd.PatternError, sd.SparseDSLError)
    assert issubclass(sd.InputError, sd.SparseDSLError)
    assert not issubclass(sd.InputError, sd.PatternError)


def test_at_helper():
    assert _at("ab\ncd x", "x") == (2, 4)
    assert _at("x x", "x", 1) == (1, 3)


# --------------------------------------------------------------------------
# syntax
# --------------------------------------------------------------------------

def test_unexpected_token():
    src = "pattern p() { causal & }"
    err = pattern_error(src, 1, 24, "unexpected '}'", "expected")
    # what may follow '&': the start of an operand
    for word in ("'('", "'~'", "a name", "an integer"):
        assert word in str(err)


def test_unexpected_token_on_a_later_line():
    src = "# a comment\npattern p() {\n    causal & window(4) )\n}\n"
    pattern_error(src, 3, 24, "unexpected ')'", "expected '}'")


def test_two_expressions_in_a_body():
    src = "pattern p() {\n  let w = 4\n  window(w)\n  causal\n}"
    pattern_error(src, 4, 3, "unexpected 'causal'", "expected '}'")


def test_unexpected_character():
    src = "pattern p() { causal $ window(4) }"
    err = pattern_error(src, 1, 22, "unexpected character '$'")
    assert str(err).split("\n")[2] == " " * (4 + 21) + "^"


def test_unexpected_character_after_tab_and_lines():
    src = "pattern p() {\n\tcausal @ full\n}"
    pattern_error(src, 2, 9, "unexpected character '@'")


def test_unexpected_end_of_file_after_operator():
    src = "pattern p() {\n  causal &\n"
    # the caret sits just past the end of the last line
    pattern_error(src, 2, 11, "unexpected end of file", "expected", "a name")


def test_unclosed_brace():
    src = "pattern p() {\n  causal\n"
    pattern_error(src, 2, 9, "unexpected end of file", "expected '}'")


def test_unclosed_paren_before_brace():
    src = "pattern p() { causal & (window(4) | sink(2) }"
    pattern_error(src, 1, 45, "unexpected '}'", "expected ')'")


def test_unclosed_call_paren():
    src = "pattern p() { window(4 }"
    pattern_error(src, 1, 24, "unexpected '}'", "')'", "','")


def test_unclosed_paren_at_end_of_file():
    src = "pattern p() { causal & (window(4) | sink(2)"
    pattern_error(src, 1, len(src) + 1, "unexpected end of file", "')'")


def test_extra_closing_brace():
    src = "pattern p() { window(4) }\n}"
    pattern_error(src, 2, 1, "unexpected '}'", "'pattern'")


def test_bad_parameter_list():
    src = "pattern p( { causal }"
    pattern_error(src, 1, 12, "unexpected '{'", "expected", "')'")


# --------------------------------------------------------------------------
# names, atoms, parameters
# --------------------------------------------------------------------------

def test_unknown_atom_did_you_mean():
    src = "pattern p() { causal & windw(4) }"
    err = at_error(src, "windw", "unknown atom or pattern 'windw'", "did you mean 'window'?")
    assert str(err).split("\n")[2].endswith("^" + "~" * (len("windw(4)") - 1))


def test_unknown_name_did_you_mean():
    at_error("pattern p() { causl }", "causl", "unknown name 'causl'", "did you mean 'causal'?")


def test_unknown_name_without_suggestion():
    err = at_error("pattern p() { zzqqx }", "zzqqx", "unknown name 'zzqqx'")
    assert "did you mean" not in str(err)


def test_unknown_atom_parameter_did_you_mean():
    src = "pattern p() { topk(8, blok=64) }"
    err = at_error(src, "blok", "topk has no argument 'blok'", "did you mean 'block'?")
    assert "usage: topk(n, block, score, causal)" in str(err)


def test_unknown_atom_parameter_strided():
    at_error("pattern p() { strided(2, ofset=1) }", "ofset", "no argument 'ofset'", "did you mean 'offset'?")


def test_atom_argument_given_twice():
    at_error("pattern p() { window(4, size=3) }", "size=", "'size'", "twice")


def test_too_many_arguments():
    err = at_error("pattern p() { causal & window(4, 5) }", "window", "window takes 1 argument(s), got 2")
    assert "usage: window(size)" in str(err)


def test_missing_atom_argument():
    err = at_error("pattern p() { dilated(4) }", "dilated", "dilated needs its argument 'rate'")
    assert "usage: dilated(size, rate)" in str(err)


def test_int_function_arity():
    at_error("pattern p() { window(min(1)) }", "min(", "min() takes 2 positional argument(s)")


def test_bad_choice():
    at_error("pattern p() { topk(4, score=max) }", "max", "score of topk must be one of mean, minmax")


def test_bool_argument_needs_true_or_false():
    at_error("pattern p() { topk(4, causal=1) }", "1)", "causal of topk must be true or false")


# --------------------------------------------------------------------------
# types
# --------------------------------------------------------------------------

def test_mask_where_integer_needed():
    at_error("pattern p() { window(causal) }", "causal", "needs an integer, got a mask")


def test_condition_where_integer_needed():
    at_error("pattern p() { window(true) }", "true", "needs an integer, got a condition")


def test_integer_where_mask_needed():
    at_error("pattern p() { causal - 3 }", "3", "needs a mask, got an integer")
    at_error("pattern p() { ~(h + 1) }", "h + 1", "'~' needs a mask, got an integer")
    at_error("pattern p() { heads[0] => causal, heads[*] => 3 }".replace(", ", "\n"), "3",
             "needs a mask, got an integer")


def test_integer_operand_of_amp():
    # the whole operation is underlined; the message explains the precedence trap
    at_error("pattern p() { causal & 3 }", "causal &", "'&' combines masks, got an integer")
    at_error("pattern p() { where(q > 1 | k > 1) }", "1 | k", "'|' combines masks, got an integer", "'or'")


def test_mask_where_condition_needed():
    at_error("pattern p() { where(causal) }", "causal)", "needs a condition, got a mask")


def test_integer_where_condition_needed():
    at_error("pattern p() { where(3) }", "3", "needs a condition, got an integer")


def test_bar_on_conditions_suggests_or():
    at_error("pattern p() { where((q > 1) | (k > 1)) }", "(q > 1) |", "'|'", "use 'or'")


def test_amp_on_conditions_suggests_and():
    at_error("pattern p() { where((q > 1) & (k > 1)) }", "(q > 1) &", "'&'", "use 'and'")


def test_tilde_on_condition_suggests_not():
    at_error("pattern p() { where(~(q > 1)) }", "~", "'~' complements a mask", "use 'not'")


def test_not_on_mask():
    at_error("pattern p() { not causal }", "causal", "'not' needs a condition, got a mask")


def test_body_must_be_a_mask():
    at_error("pattern p() {\n  3 + h\n}", "3 + h", "must be a mask, got an integer")


# --------------------------------------------------------------------------
# argument ranges
# --------------------------------------------------------------------------

@pytest.mark.parametrize("src, needle, phrase", [
    ("pattern p() { window(0) }", "0", "window: size must be at least 1, got 0"),
    ("pattern p() { sink(-1) }", "-1", "sink: n must be at least 0, got -1"),
    ("pattern p() { band(-1, 2) }", "-1", "band: left must be at least 0, got -1"),
    ("pattern p() { band(1, -2) }", "-2", "band: right must be at least 0, got -2"),
    ("pattern p() { local_blocks(2, block=0) }", "0", "local_blocks: block size must be at least 1, got 0"),
    ("pattern p() { local_blocks(0) }", "0", "local_blocks: n must be at least 1, got 0"),
    ("pattern p() { dilated(4, 0) }", "0", "dilated: rate must be at least 1, got 0"),
    ("pattern p() { landmarks(block=0) }", "0", "landmarks: block size must be at least 1, got 0"),
    ("pattern p() { topk(0) }", "0", "topk: n must be at least 1, got 0"),
    ("pattern p() { causal & window(4 - 2 * 2) }", "4 - 2", "window: size must be at least 1, got 0"),
])
def test_argument_range(src, needle, phrase):
    at_error(src, needle, phrase)


def test_argument_range_through_python_parameter():
    src = "pattern p(w: int) {\n  causal & window(w)\n}"
    at_error(src, "w)\n", "window: size must be at least 1, got 0", w=0)


def test_argument_may_not_depend_on_positions():
    at_error("pattern p() { window(q) }", "q", "may not depend on q or k", "where(")


def test_dynamic_argument_must_be_same_for_every_head():
    at_error("pattern p() { topk(h + 1) }", "h + 1", "must be the same for every head", "uses h")


# --------------------------------------------------------------------------
# dynamic atoms: where they may stand
# --------------------------------------------------------------------------

@pytest.mark.parametrize("src, needle, where", [
    ("pattern p() { ~topk(4) }", "topk", "under '~'"),
    ("pattern p() { window(4) - topk(4) }", "topk", "on the right of '-'"),
    ("pattern p() { topk(4) - window(4) }", "topk", "on the left of '-'"),
    ("pattern p() { causal - (window(4) | topk(2)) }", "topk", "on the right of '-'"),
    ("pattern p() { window(8) | (causal & topk(4)) }", "topk", "inside an intersection within a union"),
    ("pattern p() { window(4) & (causal | (full & topk(4))) }", "topk", "inside an intersection"),
    ("pattern p() { ~landmarks(block=4) }", "landmarks", "under '~'"),
    ("pattern p() { window(8) | (causal & landmarks(block=4)) }", "landmarks", "inside an intersection"),
])
def test_dynamic_atom_forbidden_places(src, needle, where):
    err = at_error(src, needle, where, "data-dependent atom may only be an operand of the top-level union",
                   "causal & (window(512) | topk(8, block=64))")
    assert str(err).startswith("<string>:1:")


@pytest.mark.parametrize("src", [
    "pattern p() { causal & (window(512) | topk(8, block=64)) }",
    "pattern p() { topk(4) }",
    "pattern p() { causal & topk(4) }",
    "pattern p() { landmarks | window(4) }",
    "pattern p() { causal & (window(4) | (sink(1) | topk(2))) }",
    "pattern p() { causal & (heads[0] => topk(2), heads[*] => window(4)) }",
    "pattern p() { causal & local_blocks(1, block=8) | landmarks(block=8) }",
])
def test_dynamic_atom_allowed_places(src):
    p = C(src)
    assert p.is_dynamic


# --------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------

def test_import_cycle(tmp_path: Path):
    (tmp_path / "a.attn").write_text('import "b.attn"\npattern pa() { causal }\n')
    (tmp_path / "b.attn").write_text('import "a.attn"\npattern pb() { full }\n')
    with pytest.raises(sd.PatternError) as info:
        C(str(tmp_path / "a.attn"))
    err = info.value
    # reported at the import that closes the cycle, in b.attn
    _check_format(err, (tmp_path / "b.attn").read_text(), 1, 1, name=str((tmp_path / "b.attn").resolve()))
    assert "import cycle: a.attn -> b.attn -> a.attn" in str(err)


def test_self_import(tmp_path: Path):
    (tmp_path / "s.attn").write_text('pattern x() { causal }\nimport "s.attn"\n')
    with pytest.raises(sd.PatternError) as info:
        C(str(tmp_path / "s.attn"))
    _check_format(info.value, (tmp_path / "s.attn").read_text(), 2, 1, name=str((tmp_path / "s.attn").resolve()))
    assert "import cycle: s.attn -> s.attn" in str(info.value)


def test_missing_import_file(tmp_path: Path):
    text = '# header\nimport "nowhere.attn"\npattern pc() { full }\n'
    (tmp_path / "c.attn").write_text(text)
    with pytest.raises(sd.PatternError) as info:
        C(str(tmp_path / "c.attn"))
    _check_format(info.value, text, 2, 1, name=str((tmp_path / "c.attn").resolve()))
    assert "file not found" in str(info.value)
    assert "nowhere.attn" in str(info.value)


def test_syntax_error_in_imported_file_names_that_file(tmp_path: Path):
    (tmp_path / "lib.attn").write_text("pattern lib() {\n  causal &&\n}\n")
    (tmp_path / "main.attn").write_text('import "lib.attn"\npattern m() { lib }\n')
    with pytest.raises(sd.PatternError) as info:
        C(str(tmp_path / "main.attn"))
    _check_format(info.value, (tmp_path / "lib.attn").read_text(), 2, 11,
                  name=str((tmp_path / "lib.attn").resolve()))
    assert "unexpected '&'" in str(info.value)


def test_missing_pattern_file(tmp_path: Path):
    with pytest.raises(sd.PatternError) as info:
        C(str(tmp_path / "zzz.attn"))
    assert "file not found" in str(info.value) and "zzz.attn" in str(info.value)


# --------------------------------------------------------------------------
# parameters and pattern calls
# --------------------------------------------------------------------------

def test_missing_required_parameter_at_compile_pattern():
    src = "pattern a(w: int) { window(w) }"
    err = at_error(src, "w: int", "missing required parameter 'w' of pattern 'a'")
    assert "pass w=... to compile_pattern" in str(err)


def test_missing_required_parameter_in_a_call():
    src = "pattern a(w: int) { window(w) }\npattern b() { causal & a() }"
    err = at_error(src, "a()", "missing required parameter 'w' of pattern 'a'", pattern="b")
    assert "pass w=... in the call" in str(err)


def test_unknown_parameter_in_a_call():
    src = "pattern a(w: int) { window(w) }\npattern b() { a(ww=3) }"
    err = at_error(src, "a(ww", "pattern 'a' has no parameter 'ww'", "did you mean 'w'?", pattern="b")
    assert "parameters: w" in str(err)


def test_positional_argument_to_a_pattern():
    src = "pattern a(w: int) { window(w) }\npattern b() { a(3) }"
    at_error(src, "3)", "by name", pattern="b")


def test_unknown_parameter_at_compile_pattern():
    with pytest.raises(sd.PatternError) as info:
        C("pattern a(w: int) { window(w) }", ww=3)
    assert "pattern 'a' has no parameter 'ww'" in str(info.value)
    assert "did you mean 'w'?" in str(info.value)


@pytest.mark.parametrize("value", ["x", True, False, 2.5, None])
def test_bad_python_type_for_int_parameter(value):
    src = "pattern p(w: int = 4) { window(w) }"
    at_error(src, "w: int", "parameter 'w' of pattern 'p' is int", f"got {value!r}", w=value)


@pytest.mark.parametrize("value", [1, 0, "true"])
def test_bad_python_type_for_bool_parameter(value):
    src = "pattern p(c: bool = true) { topk(2, causal=c) }"
    at_error(src, "c: bool", "parameter 'c' of pattern 'p' is bool", f"got {value!r}", c=value)


def test_unknown_parameter_type():
    at_error("pattern p(x: float) { causal }", "x: float", "unknown parameter type 'float'")


def test_parameter_depending_on_positions_in_a_call():
    src = "pattern a(w: int) { window(w) }\npattern b() { a(w=q) }"
    at_error(src, "a(w=q)", "may not depend on q or k", pattern="b")


# --------------------------------------------------------------------------
# positions and divisors
# --------------------------------------------------------------------------

def test_q_outside_where():
    at_error("pattern p() { causal & window(q - 1) }", "q - 1", "may not depend on q or k")


def test_k_in_a_pattern_argument():
    at_error("pattern p() { band(k, 2) }", "k,", "may not depend on q or k")


def test_q_in_head_selection():
    at_error("pattern p() { heads[q] => causal }", "q]", "head selection", "not q")


def test_divisor_depending_on_positions():
    at_error("pattern p() { where(q % (k + 1) == 0) }", "k + 1", "divisor of '%' may not depend on q or k")


def test_floordiv_divisor_depending_on_positions():
    at_error("pattern p() { where(q // k == 0) }", "k ==", "divisor of '//' may not depend on q or k")


def test_constant_division_by_zero():
    at_error("pattern p() { window(4 // 0) }", "0", "by zero")


def test_constant_modulo_by_zero_through_let():
    src = "pattern p() {\n  let x = 2 - 2\n  where(q % x == 0)\n}"
    at_error(src, "x ==", "by zero")


# --------------------------------------------------------------------------
# pattern names
# --------------------------------------------------------------------------

def test_pattern_uses_a_later_pattern():
    src = "pattern a() { b }\npattern b() { causal }"
    at_error(src, "b }", "cannot use a pattern defined later in the file ('b')", pattern="a")


def test_pattern_uses_itself():
    at_error("pattern a() { causal & a }", "a }", "cannot use itself", nth=0)


def test_duplicate_pattern_names():
    src = "pattern a() { causal }\npattern a() { full }"
    pattern_error(src, 2, 1, "pattern 'a' is defined twice")


def test_builtin_pattern_name():
    pattern_error("pattern causal() { full }", 1, 1, "built-in name")


def test_several_patterns_without_pattern_argument():
    with pytest.raises(sd.PatternError) as info:
        C("pattern a() { causal }\npattern b() { full }")
    assert "defines several patterns (a, b)" in str(info.value)
    assert "pattern=NAME" in str(info.value)


def test_unknown_pattern_argument():
    with pytest.raises(sd.PatternError) as info:
        C("pattern alpha() { causal }\npattern beta() { full }", pattern="betta")
    assert "no pattern named 'betta'" in str(info.value)
    assert "did you mean 'beta'?" in str(info.value)
    assert "patterns: alpha, beta" in str(info.value)


def test_no_pattern_defined():
    with pytest.raises(sd.PatternError) as info:
        C("# only a comment\n")
    assert "no pattern is defined" in str(info.value)


# --------------------------------------------------------------------------
# errors that need the head count (at mask / call time)
# --------------------------------------------------------------------------

def test_head_not_covered():
    src = "pattern p() {\n  heads[0:2] => causal\n}"
    p = C(src)
    assert p.mask(4, 4, 2).shape == (2, 4, 4)  # two heads: both covered
    with pytest.raises(sd.PatternError) as info:
        p.mask(4, 4, 4)
    _check_format(info.value, src, 2, 3)
    assert "head 2 is not covered by any heads[...] branch (H=4)" in str(info.value)


def test_head_dependent_argument_illegal_for_head_zero():
    src = "pattern p() { window(h - 1) }"
    p = C(src)
    with pytest.raises(sd.PatternError) as info:
        p.mask(4, 4, 2)
    _check_format(info.value, src, *_at(src, "window"))
    assert "window: size must be at least 1, got -1 for head 0" in str(info.value)
    assert "H=2" in str(info.value)


def test_head_dependent_argument_illegal_at_call_time():
    p = C("pattern p() { causal & window(h - 1) }")
    q = torch.randn(1, 2, 3, 4)
    with pytest.raises(sd.PatternError, match=r"got -1 for head 0"):
        p(q, q, q)


def test_head_dependent_argument_legal_in_its_branch():
    # h - 1 >= 1 for every head the second branch takes (heads 2, 3)
    src = "pattern p() {\n  heads[0:2] => causal\n  heads[*] => window(h - 1)\n}"
    m = C(src).mask(5, 5, 4)
    assert m[3].sum() == 5 + 4  # window(2) on 5 positions
    assert m[2].sum() == 5  # window(1): the diagonal


def test_head_dependent_division_by_zero():
    src = "pattern p() { window(H // (Hk - 1)) }"
    p = C(src)
    assert p.mask(3, 3, 4, 2).sum() == 4 * (3 + 2 + 1)  # window(4 // 1): causal on 3 positions, 4 heads
    with pytest.raises(sd.PatternError) as info:
        p.mask(3, 3, 2, 1)
    _check_format(info.value, src, *_at(src, "H //"))
    assert "by zero" in str(info.value)


def test_head_dependent_modulo_by_zero_names_the_head():
    src = "pattern p() { where(q % (h - 1) == 0) }"
    with pytest.raises(sd.PatternError) as info:
        C(src).mask(4, 4, 3)
    _check_format(info.value, src, *_at(src, "q %"))
    assert "by zero for head 1" in str(info.value)


def test_division_by_zero_in_head_selection():
    src = "pattern p() {\n  heads[H // (Hk - 1)] => causal\n  heads[*] => full\n}"
    p = C(src)
    with pytest.raises(sd.PatternError, match="division by zero in a head selection"):
        p.mask(2, 2, 2, 1)


# --------------------------------------------------------------------------
# input errors of a call p(q, k, v)
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def causal():
    return C("pattern p() { causal }")


def _qkv(b=1, h=4, hk=2, lq=8, lk=8, d=16, dv=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(b, h, lq, d, generator=g, dtype=dtype), torch.randn(b, hk, lk, d, generator=g, dtype=dtype),
            torch.randn(b, hk, lk, dv, generator=g, dtype=dtype))


def _input_error(fn, pattern: str):
    with pytest.raises(sd.InputError) as info:
        fn()
    assert re.search(pattern, str(info.value)), str(info.value)
    return info.value


def test_input_ok(causal):
    q, k, v = _qkv()
    assert causal(q, k, v).shape == (1, 4, 8, 16)


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_wrong_ndim(causal, which):
    t = dict(zip("qkv", _qkv()))
    t[which] = t[which][0]
    _input_error(lambda: causal(t["q"], t["k"], t["v"]),
                 rf"{which} must have 4 dimensions .* got shape \({t[which].shape[0]}, 8, 16\)")


def test_not_a_tensor(causal):
    q, k, v = _qkv()
    _input_error(lambda: causal(q, k, None), r"v must be a torch\.Tensor, got NoneType")
    _input_error(lambda: causal(q.numpy(), k, v), r"q must be a torch\.Tensor, got ndarray")


def test_heads_not_a_multiple(causal):
    q, k, v = _qkv(h=3, hk=2)
    _input_error(lambda: causal(q, k, v), r"query heads \(3\) must be a multiple of the number of KV heads \(2\)")


def test_batch_mismatch(causal):
    q, _, _ = _qkv(b=2)
    _, k, v = _qkv(b=1)
    _input_error(lambda: causal(q, k, v), r"batch sizes differ: q has 2, k has 1")


def test_batch_mismatch_of_v(causal):
    q, k, _ = _qkv(b=1)
    _, _, v = _qkv(b=3)
    _input_error(lambda: causal(q, k, v), r"k and v must agree .* \(1, 2, 8\) and \(3, 2, 8\)")


def test_head_dim_mismatch(causal):
    q, _, _ = _qkv(d=15)
    _, k, v = _qkv(d=16)
    _input_error(lambda: causal(q, k, v), r"head dims differ: q has 15, k has 16")


def test_kv_length_mismatch(causal):
    q, k, _ = _qkv(lk=8)
    _, _, v = _qkv(lk=7)
    _input_error(lambda: causal(q, k, v), r"k and v must agree .* \(1, 2, 8\) and \(1, 2, 7\)")


def test_kv_heads_mismatch(causal):
    q, k, _ = _qkv(hk=2)
    _, _, v = _qkv(hk=1)
    _input_error(lambda: causal(q, k, v), r"k and v must agree .* \(1, 2, 8\) and \(1, 1, 8\)")


def test_dtype_mismatch(causal):
    q, k, v = _qkv()
    _input_error(lambda: causal(q, k, v.half()),
                 r"share one dtype, got torch\.float32, torch\.float32, torch\.float16")
    _input_error(lambda: causal(q.double(), k, v), r"share one dtype, got torch\.float64")


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_non_float_dtype(causal, dtype):
    q, k, v = (t.to(dtype) for t in _qkv())
    _input_error(lambda: causal(q, k, v), rf"q must be float16, bfloat16, float32 or float64, got {dtype}")


@pytest.mark.skip(reason="different devices cannot be tested on a CPU-only machine")
def test_different_devices():  # pragma: no cover
    pass


@pytest.mark.parametrize("backend", ["cuda", "Reference", "", None])
def test_bad_backend(causal, backend):
    q, k, v = _qkv()
    _input_error(lambda: causal(q, k, v, backend=backend), r"backend must be one of auto, reference, triton")


@pytest.mark.parametrize("scale", ["x", float("nan"), float("inf"), -float("inf"), True, [1.0]])
def test_bad_scale(causal, scale):
    q, k, v = _qkv()
    _input_error(lambda: causal(q, k, v, scale=scale), r"scale must be a finite number")


def test_mask_negative_length(causal):
    _input_error(lambda: causal.mask(q_len=-1), r"^q_len must be >= 0, got -1$")
    _input_error(lambda: causal.mask(4, kv_len=-2), r"^kv_len must be >= 0, got -2$")
    _input_error(lambda: causal.mask(4.0), r"q_len must be an int, got float 4\.0")
    _input_error(lambda: causal.mask(True), r"q_len must be an int, got bool")


def test_mask_heads(causal):
    _input_error(lambda: causal.mask(4, num_heads=0), r"^num_heads must be >= 1, got 0$")
    _input_error(lambda: causal.mask(4, num_heads=4, num_kv_heads=0), r"num_kv_heads must be >= 1, got 0")
    _input_error(lambda: causal.mask(4, num_heads=4, num_kv_heads=3),
                 r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)")


def test_block_layout_block(causal):
    _input_error(lambda: causal.block_layout(4, block=0), r"^block must be >= 1, got 0$")
    _input_error(lambda: causal.block_layout(4, block=-3), r"^block must be >= 1, got -3$")


def test_static_queries_on_a_dynamic_pattern():
    p = C("pattern p() { causal & topk(2, block=4) }")
    _input_error(lambda: p.mask(8), r"depends on the data \(topk\); pass q= and k=")
    _input_error(lambda: p.density(8), r"depends on the data")
    _input_error(lambda: p.block_layout(8, block=4), r"depends on the data")


def test_mask_with_only_q():
    p = C("pattern p() { causal & topk(2, block=4) }")
    q, k, _ = _qkv(h=1, hk=1)
    _input_error(lambda: p.mask(8, 8, q=q), r"pass both q and k")
    _input_error(lambda: p.mask(8, 8, 2, q=q, k=k), r"mask: q must be \[B, 2, 8, D\]")


def test_select_blocks_without_topk(causal):
    q, k, _ = _qkv()
    _input_error(lambda: causal.select_blocks(q, k), r"has no topk\(\.\.\.\) atom")


# --------------------------------------------------------------------------
# the keywords FlashAttention and SDPA users reach for
# --------------------------------------------------------------------------

def _qkv_gqa():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 4, 9, 16, generator=g), torch.randn(1, 2, 9, 16, generator=g), \
        torch.randn(1, 2, 9, 16, generator=g)


@pytest.mark.parametrize("kwargs", [dict(softmax_scale=0.3), dict(scale=torch.tensor(0.3)),
                                    dict(scale=torch.tensor([0.3], dtype=torch.float64)),
                                    dict(scale=0.3, dropout_p=0.0, enable_gqa=True, attn_mask=None)])
def test_flash_and_sdpa_keywords_that_are_accepted(kwargs):
    """Each spelling gives exactly the result of scale=0.3 (the reference backend)."""
    p = C("pattern p() { causal & window(4) }")
    q, k, v = _qkv_gqa()
    assert torch.equal(p(q, k, v, **kwargs), p(q, k, v, scale=0.3))


@pytest.mark.parametrize("kwargs, phrase", [
    (dict(is_causal=True), "write `causal`"),
    (dict(is_causal=False), "write `causal`"),
    (dict(causal=True), "write `causal`"),
    (dict(attn_mask=torch.ones(9, 9, dtype=torch.bool)), "no dense mask"),
    (dict(window_size=(4, 0)), "window(n)"),
    (dict(dropout_p=0.1), "no attention dropout"),
    (dict(enable_gqa=False), "enable_gqa=False with 4 query heads and 2 KV heads"),
    (dict(scale=0.1, softmax_scale=0.2), "pass the scale once"),
    (dict(scale=torch.ones(2)), "one-element real tensor"),
    (dict(scale=torch.tensor(float("nan"))), "finite number"),
    (dict(block_mask=object()), "BlockMask"),
    (dict(sclae=0.1), "unexpected keyword argument 'sclae'"),
])
def test_flash_and_sdpa_keywords_that_are_refused(kwargs, phrase):
    p = C("pattern p() { causal }")
    q, k, v = _qkv_gqa()
    with pytest.raises(sd.InputError) as e:
        p(q, k, v, **kwargs)
    assert phrase in str(e.value)


def test_flex_block_mask_device():
    """The block mask is built where asked (a tensor's device), on the CPU when there is no
    CUDA device, and device='cuda' without one is a clear InputError."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    p = C("pattern p() { causal }")
    cpu = p.to_flex_block_mask(256, 256, 2, 2, device=torch.device("cpu"), block_size=64)
    assert cpu.kv_num_blocks.device.type == "cpu"
    # causal in blocks of 64: query block i has the diagonal block partial and blocks 0..i-1 full
    assert cpu.kv_num_blocks[0, 0].tolist() == [1, 1, 1, 1]
    assert cpu.full_kv_num_blocks[0, 0].tolist() == [0, 1, 2, 3]
    if not torch.cuda.is_available():
        assert p.to_flex_block_mask(256, 256, 2, 2).kv_num_blocks.device.type == "cpu"
        with pytest.raises(sd.InputError, match="no CUDA device"):
            p.to_flex_block_mask(256, 256, 2, 2, device="cuda")


@pytest.mark.parametrize("kwargs, shape, phrase", [
    (dict(layout="bsdh"), (1, 9, 4, 16), "layout must be 'bhsd'"),
    (dict(layout="bshd"), (9, 4, 16), "[batch, length, heads, head_dim]"),
])
def test_layout_errors(kwargs, shape, phrase):
    p = C("pattern p() { causal }")
    t = torch.randn(*shape)
    with pytest.raises(sd.InputError) as e:
        p(t, t, t, **kwargs)
    assert phrase in str(e.value)


def test_layout_with_a_packed_batch():
    p = C("pattern p() { causal }")
    t = torch.randn(9, 4, 16)
    cu = torch.tensor([0, 9], dtype=torch.int32)
    with pytest.raises(sd.InputError, match="packed batch"):
        p(t, t, t, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=9, max_seqlen_k=9, layout="bshd")


def test_decode_takes_flash_attention_keywords():
    """flash_attn_with_kvcache's spelling: softmax_scale is scale (same result); causal and
    window_size are refused with what to write instead; a misspelt keyword is named."""
    p = C("pattern p() { causal & window(6) }")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 1, 16, generator=g)
    kc, vc = torch.randn(2, 2, 12, 16, generator=g), torch.randn(2, 2, 12, 16, generator=g)
    lens = torch.tensor([12, 7], dtype=torch.int32)
    assert torch.equal(p.decode(q, kc, vc, lens, softmax_scale=0.2), p.decode(q, kc, vc, lens, scale=0.2))
    for kwargs, phrase in ((dict(causal=True), "write `causal`"), (dict(window_size=(5, 0)), "window(n)"),
                           (dict(enable_gqa=False), "4 query heads and 2 KV heads"),
                           (dict(num_split=2), "unexpected keyword argument 'num_split'")):
        with pytest.raises(sd.InputError) as e:
            p.decode(q, kc, vc, lens, **kwargs)
        assert str(e.value).startswith("decode: ") and phrase in str(e.value)
