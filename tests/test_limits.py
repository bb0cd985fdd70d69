"""The limits of the language (docs/language.md, "Limits"): integers in
[-2**62, 2**62], checked at compile time with interval arithmetic
(sparsedsl/ir/ranges.py); compile time linear in the IR's DAG; nesting and
size limits; head counts up to 2**31 checked without a list of every head;
and the reference attention on edge inputs (Lq = 0, non-finite values)."""
from __future__ import annotations

import math
import time

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsedsl as sd
from sparsedsl.ir import build
from sparsedsl.ir import nodes as ir
from sparsedsl.ir.ranges import INT_LIMIT, POSITION_LIMIT, SYMBOL_RANGES, value_range, widest

BIG = 2**62


def _error(src: str, match: str, **params) -> sd.PatternError:
    with pytest.raises(sd.PatternError, match=match) as e:
        sd.compile_pattern(src, **params)
    return e.value


def _causal(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


# ---- A. integers -------------------------------------------------------------------


@pytest.mark.parametrize("body, value", [
    ("window(10000000000000000000)", 10**19),
    ("sink(9223372036854775808)", 2**63),
    ("window(100000000000000000000)", 10**20),
    ("window(10000000000000000000000000000000)", 10**31),
    ("local_blocks(1, block=10000000000000000000)", 10**19),
    ("strided(2, offset=-10000000000000000000)", 10**19),
    ("topk(10000000000000000000)", 10**19),
    ("window(4611686018427387905)", 2**62 + 1),
])
def test_literals_out_of_range(body, value):
    src = f"pattern p() {{\n    causal & {body}\n}}"
    e = _error(src, rf"integer {value} is out of range: integers lie in \[-2\*\*62, 2\*\*62\]")
    assert e.span.line == 2 and src.splitlines()[1][e.span.col - 1:].startswith(str(value))


def test_let_and_folded_constants_out_of_range():
    e = _error("pattern p() {\n    let big = 18446744073709551616\n    sink(big)\n}", "integer 18446744073709551616")
    assert (e.span.line, e.span.col) == (2, 15)
    # every folded constant: 2**61 * 4 = 2**63, at the product's span
    e = _error("pattern p() { window(2305843009213693952 * 4 // 8) }", "integer 9223372036854775808 is out")
    assert e.span.col == 22 and e.span.end_col == 45
    _error("pattern p() { sink(-4611686018427387904 - 1 + 9) }", "integer -4611686018427387905 is out")
    # the limits themselves are in range
    p = sd.compile_pattern("pattern p() { causal & window(4611686018427387904) | sink(-(-4611686018427387904)) }")
    assert torch.equal(p.mask(8)[0], torch.ones(8, 8, dtype=torch.bool))


def test_values_from_python_and_the_builder():
    src = "pattern p(w: int = 8) { causal & window(w) }"
    e = _error(src, r"parameter 'w' of pattern 'p': integer 10000000000000000000 is out of range", w=10**19)
    assert e.span is not None and "w=10000000000000000000" in str(e)
    assert torch.equal(sd.compile_pattern(src, w=BIG).mask(8)[0], _causal(8))
    with pytest.raises(sd.PatternError, match="integer 9223372036854775808 is out of range"):
        sd.sink(2**63)
    with pytest.raises(sd.PatternError, match="integer -10000000000000000000 is out of range"):
        sd.strided(3, offset=-10**19)
    with pytest.raises(sd.PatternError, match=r"q \* 4611686018427387904 may reach 2\*\*92"):
        sd.where(sd.q * 2**62 * 4 == 0)
    with pytest.raises(sd.PatternError, match="integer 9223372036854775808"):
        sd.window(sd.h + 2**61 * 4)


def test_no_window_means_causal():
    # window(10**9) is how users say "no window": it must stay exact
    p = sd.compile_pattern("pattern p() { window(1000000000) }")
    assert torch.equal(p.mask(8)[0], _causal(8))
    p = sd.compile_pattern("pattern p(window: int = 1) { causal & window(window) }", window=10**9)
    assert torch.equal(p.mask(8)[0], _causal(8))


def test_position_expressions_may_not_overflow():
    e = _error("pattern p() { where(q * 4611686018427387904 * 4 == 0) }",
               r"q \* 4611686018427387904 may reach 2\*\*92: integers lie in \[-2\*\*62, 2\*\*62\]")
    assert (e.span.col, e.span.end_col) == (21, 44)
    _error("pattern p() { where(q * q * q < k) }", r"q \* q \* q may reach 2\*\*90")
    _error("pattern p() { let d = (q - k) * 4611686018427387904\n causal }", r"may reach -2\*\*93")
    _error("pattern p() { where(q * 2147483648 * 8 > k) }", r"q \* 2147483648 \* 8 may reach -?\d+")
    # in range for every position of a sequence shorter than 2**30: kept, and exact
    p = sd.compile_pattern("pattern p() { where((q - k) * (q - k) < 10 * 2147483648) }")
    assert p.mask(4).all()
    p = sd.compile_pattern("pattern p() { where(q * 2147483648 - k * 2147483648 >= 0) }")
    assert torch.equal(p.mask(8)[0], _causal(8))


def test_head_dependent_arguments_may_not_overflow():
    _error("pattern p() { strided(3, offset=h * 1099511627776) }", r"h \* 1099511627776 may reach 2\*\*71")
    _error("pattern p() { heads[H * 4611686018427387904:] => causal\n heads[*] => none }", "may reach")
    p = sd.compile_pattern("pattern p() { strided(3, offset=h * 3) }")
    m = p.mask(6, num_heads=2)
    assert m[1, 0].tolist() == [(k // 64 + 3) % 3 == 0 for k in range(6)]


def test_atom_products():
    _error("pattern p() { local_blocks(2, block=4611686018427387904) }",
           r"local_blocks: n \* block = 9223372036854775808 is larger than 2\*\*62")
    _error("pattern p() { dilated(2147483649, 2147483648) }", r"dilated: size \* rate = \d+ is larger than 2\*\*62")
    _error("pattern p() { dilated(h + 1, 4611686018427387904) }", r"dilated: size \* rate may reach")
    with pytest.raises(sd.PatternError, match=r"local_blocks: n \* block"):
        sd.local_blocks(sd.h + 1, block=2**40)
    for src in ("local_blocks(1, block=4611686018427387904)", "dilated(2147483648, 2147483648)"):
        p = sd.compile_pattern(f"pattern p() {{ {src} }}")
        want = torch.ones(8, 8, dtype=torch.bool) if "local" in src else torch.eye(8, dtype=torch.bool)
        assert torch.equal(p.mask(8)[0], want)


@pytest.mark.parametrize("n", [10**18, 2**62])
def test_topk_larger_than_the_blocks_selects_all(n):
    p = sd.compile_pattern(f"pattern p() {{ causal & topk({n}, block=4) }}")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8, generator=g) for _ in range(3))
    assert torch.equal(p.mask(16, num_heads=2, q=q, k=k)[0], _causal(16).expand(2, 16, 16))
    dense = sd.compile_pattern("pattern p() { causal }")
    torch.testing.assert_close(p(q, k, v, backend="reference"), dense(q, k, v, backend="reference"))
    with pytest.raises(sd.InputError, match="too large"):
        p.select_blocks(q, k)  # its documented [B, H, R, n] layout cannot exist; an error, not a crash
    _error("pattern p() { topk(4611686018427387905) }", "is out of range")


def test_huge_blocks_of_dynamic_atoms():
    big = 4611686018427387904
    p = sd.compile_pattern(f"pattern p() {{ causal & (topk(3, block={big}) | landmarks(block={big})) }}")
    q, k, v = (torch.randn(1, 1, 8, 4) for _ in range(3))
    assert torch.equal(p.mask(8, q=q, k=k)[0, 0], _causal(8))
    torch.testing.assert_close(p(q, k, v), sd.compile_pattern("pattern p() { causal }")(q, k, v))


# ---- the interval arithmetic (sparsedsl/ir/ranges.py) -----------------------------------


def test_ranges_api():
    assert INT_LIMIT == 2**62 and POSITION_LIMIT == 2**31
    # sequences are shorter than 2**30 tokens; q is negative in the first rows when Lq > Lk
    assert SYMBOL_RANGES["q"] == (-(2**30 - 1), 2**30 - 1) and SYMBOL_RANGES["k"] == (0, 2**30 - 1)
    assert SYMBOL_RANGES["h"] == SYMBOL_RANGES["hk"] == (0, 2**31 - 1)
    assert SYMBOL_RANGES["H"] == SYMBOL_RANGES["Hk"] == (1, 2**31)
    for s in ("q0", "q1", "k0", "k1", "Lq", "Lk"):
        assert SYMBOL_RANGES[s] == (0, 2**30)
    q, k = ir.Sym("q"), ir.Sym("k")
    assert value_range(build.int_op("-", q, k)) == (-(2**31 - 2), 2**30 - 1)
    assert value_range(build.int_op("%", q, ir.Const(-3))) == (-2, 0)
    assert value_range(build.int_op("//", ir.Const(7), build.int_op("-", ir.Sym("h"), ir.Const(1)))) == (-7, 7)
    # widest looks at every step: (q * 2**40) // 2**40 ends small but passes 2**71
    e = build.int_op("//", build.int_op("*", q, ir.Const(2**40)), ir.Const(2**40))
    assert value_range(e) == (-(2**30 - 1), 2**30 - 1) and widest(e) == (2**30 - 1) * 2**40


def test_ranges_visit_a_dag_once():
    x = ir.Sym("q")
    for _ in range(200):  # a tree of 2**200 nodes
        x = build.int_op("max", x, build.int_op("neg", x))
    t = time.perf_counter()
    assert value_range(x)[1] == 2**30 - 1
    assert value_range(x, {"q": (-5, 3)}) == (-3, 5)
    assert widest(x, {"q": (-5, 3)}) == 5
    assert time.perf_counter() - t < 2


_SMALL = {"q": (-6, 6), "k": (0, 5), "h": (0, 3), "hk": (0, 3), "H": (1, 4), "Hk": (1, 4)}


@st.composite
def _small_exprs(draw, depth=3):
    if depth == 0 or draw(st.integers(0, 3)) == 0:
        if draw(st.booleans()):
            return ir.Sym(draw(st.sampled_from(sorted(_SMALL))))
        return ir.Const(draw(st.integers(-9, 9)))
    op = draw(st.sampled_from(ir.INT_OPS))
    args = [draw(_small_exprs(depth - 1)) for _ in range(1 if op in ("neg", "abs") else 2)]
    return ir.IntOp(op, tuple(args))


def _eval(node, env):
    if isinstance(node, ir.Const):
        return node.value
    if isinstance(node, ir.Sym):
        return env[node.name]
    a = [_eval(x, env) for x in node.args]
    return {"+": lambda: a[0] + a[1], "-": lambda: a[0] - a[1], "*": lambda: a[0] * a[1],
            "//": lambda: a[0] // a[1], "%": lambda: a[0] % a[1], "min": lambda: min(a),
            "max": lambda: max(a), "neg": lambda: -a[0], "abs": lambda: abs(a[0])}[node.op]()


@settings(max_examples=150, deadline=None)
@given(_small_exprs(), st.data())
def test_value_range_is_sound(e, data):
    lo, hi = value_range(e, _SMALL)
    wide = widest(e, _SMALL)
    for _ in range(30):
        env = {s: data.draw(st.integers(*r)) for s, r in _SMALL.items()}
        try:
            v = _eval(e, env)
        except ZeroDivisionError:  # (a zero divisor is a run-time error, not a value)
            continue
        assert lo <= v <= hi and abs(v) <= wide


# ---- A. every static atom against a naive formula, with integers near every limit ----------

_EDGES = [0, 1, 2, 3, 2**31 - 1, 2**31, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 10**9, -10**19, -1, -(2**62)]
_INTS = st.one_of(st.integers(-2**70, 2**70), st.sampled_from(_EDGES), st.sampled_from([-e for e in _EDGES]),
                  st.integers(-40, 40))
_ATOMS = {  # name: (parameter names, minimums, formula)
    "window": (("size",), (1,), lambda q, k, a: q - a[0] < k <= q),
    "band": (("left", "right"), (0, 0), lambda q, k, a: q - a[0] <= k <= q + a[1]),
    "sink": (("n",), (0,), lambda q, k, a: k < a[0]),
    "global": (("n",), (0,), lambda q, k, a: q < a[0] or k < a[0]),
    "dilated": (("size", "rate"), (1, 1), lambda q, k, a: 0 <= q - k < a[0] * a[1] and (q - k) % a[1] == 0),
    "local_blocks": (("n", "block"), (1, 1), lambda q, k, a: 0 <= q // a[1] - k // a[1] < a[0]),
    "strided": (("stride", "block", "offset"), (1, 1, None), lambda q, k, a: (k // a[1] + a[2]) % a[0] == 0),
}
_PRODUCT = {"dilated": (0, 1), "local_blocks": (0, 1)}


def _valid(kind, consts, per_head):
    """Whether the rule accepts the atom: (every value in range, minimums, products)."""
    top = [c + (POSITION_LIMIT - 1 if d else 0) for c, d in zip(consts, per_head)]
    if any(not -INT_LIMIT <= c <= INT_LIMIT or t > INT_LIMIT for c, t in zip(consts, top)):
        return False
    if any(m is not None and c < m for c, m in zip(consts, _ATOMS[kind][1])):
        return False  # (the smallest head is 0: c + h is smallest there)
    if kind in _PRODUCT:
        i, j = _PRODUCT[kind]
        return top[i] * top[j] <= INT_LIMIT
    return True


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(_ATOMS)), st.lists(_INTS, min_size=3, max_size=3),
       st.lists(st.booleans(), min_size=3, max_size=3), st.integers(1, 40), st.integers(1, 3),
       st.booleans())
def test_static_atoms_with_large_integers(kind, values, per_head, length, heads, builder):
    names, _, formula = _ATOMS[kind]
    consts, per_head = values[: len(names)], [d and builder is False for d in per_head[: len(names)]]
    args = [f"({c}) + h" if d else f"({c})" for c, d in zip(consts, per_head)]
    ok = _valid(kind, consts, per_head)
    try:
        if builder:
            fn = {"global": sd.global_}.get(kind) or getattr(sd, kind)
            p = sd.compile_pattern(fn(*consts))
        else:
            p = sd.compile_pattern(f"pattern p() {{ {kind}({', '.join(args)}) }}")
        m = p.mask(length, num_heads=heads)
    except sd.PatternError:
        assert not ok
        return
    assert ok
    for h in range(heads):
        a = [c + (h if d else 0) for c, d in zip(consts, per_head)]
        want = [[formula(q, k, a) for k in range(length)] for q in range(length)]
        assert m[h].tolist() == want, (kind, a)


# ---- B. compile time is linear in the DAG ------------------------------------------------


def _timed(fn, limit=5.0):
    t = time.perf_counter()
    out = fn()
    assert time.perf_counter() - t < limit, f"took {time.perf_counter() - t:.1f} s"
    return out


@pytest.mark.parametrize("lines", [24, 40])
def test_doubling_mask_chain(lines):
    src = "pattern p() {\n let a0 = window(3)\n" + "".join(
        f" let a{i} = a{i - 1} | a{i - 1}\n" for i in range(1, lines)) + f" a{lines - 1}\n}}"
    p = _timed(lambda: sd.compile_pattern(src))
    assert torch.equal(_timed(lambda: p.mask(4))[0], _causal(4) & ~torch.ones(4, 4, dtype=torch.bool).tril(-3))


@pytest.mark.parametrize("lines", [26, 60])
def test_shared_mask_dag(lines):
    # a - ~a is a, but nothing folds it: a DAG of 3 * lines nodes, a tree of 3**lines
    src = "pattern p() {\n let a0 = window(3)\n" + "".join(
        f" let a{i} = a{i - 1} - ~a{i - 1}\n" for i in range(1, lines)) + \
        f" causal & (a{lines - 1} | topk(1, block=2))\n}}"
    p = _timed(lambda: sd.compile_pattern(src))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 2, 8, 4, generator=g), torch.randn(1, 2, 8, 4, generator=g)
    m = _timed(lambda: p.mask(8, num_heads=2, q=q, k=k))
    same = sd.compile_pattern("pattern p() { causal & (window(3) | topk(1, block=2)) }")
    assert torch.equal(m, same.mask(8, num_heads=2, q=q, k=k))
    assert _timed(lambda: p.check(8)) is None


@pytest.mark.parametrize("lines", [26, 40])
def test_doubling_position_chain(lines):
    src = "pattern p() {\n let x0 = q\n" + "".join(
        f" let x{i} = x{i - 1} + x{i - 1}\n" for i in range(1, lines)) + f" where(x{lines - 1} >= k)\n}}"
    if lines == 40:  # q * 2**33 may pass 2**62 (q < 2**30): a PatternError at the line where it may
        e = _timed(lambda: _error(src, r"x32 \+ x32 may reach 9223372028264841216"))
        assert e.span.line == 35
        return
    p = _timed(lambda: sd.compile_pattern(src))  # q * 2**25
    assert _timed(lambda: p.mask(4))[0].tolist() == [[q * 2**25 >= k for k in range(4)] for q in range(4)]


def test_doubling_chain_from_python():
    x = sd.q
    for _ in range(26):
        x = x + x
    p = _timed(lambda: sd.compile_pattern(sd.where(x >= sd.k)))
    assert _timed(lambda: p.mask(4))[0].tolist() == [[q * 2**26 >= k for k in range(4)] for q in range(4)]


def test_pattern_calls_with_the_same_arguments_are_lowered_once():
    src = "pattern p0() { window(3) }\n" + "".join(
        f"pattern p{i}() {{ p{i - 1} | (p{i - 1} & causal) }}\n" for i in range(1, 40))
    p = _timed(lambda: sd.compile_pattern(src, pattern="p39"))
    assert p.mask(4).any()


# ---- D. nesting and size limits -------------------------------------------------------------


@pytest.mark.parametrize("n", [400, 3000])
def test_flat_union_of_many_atoms(n):
    src = "pattern p() { " + " | ".join(f"band({i}, {i})" for i in range(n)) + " }"
    p = _timed(lambda: sd.compile_pattern(src))
    assert len(p.root.body.args) == n and p.mask(8).all()


def test_flat_sum_in_where():
    src = "pattern p() { where(k <= q" + " + 0 * h" * 100 + ") }"
    assert torch.equal(sd.compile_pattern(src).mask(4)[0], _causal(4))


def _calls(n):
    return "pattern p0() { window(3) }\n" + "".join(f"pattern p{i}() {{ p{i - 1} }}\n" for i in range(1, n + 1))


def test_calls_nest_64_deep():
    assert sd.compile_pattern(_calls(64), pattern="p64").root.body is sd.window(3).node  # 64 calls
    e = _error(_calls(65), "patterns call each other more than 64 deep", pattern="p65")
    assert e.span is not None


def test_nesting_depth_limit():
    ok = sd.compile_pattern("pattern p() { " + "~" * 127 + "causal }")  # 128 levels: the limit
    assert ok.mask(4).shape == (1, 4, 4) and sd.compile_pattern(ok.ir()).root is ok.root
    e = _error("pattern p() {\n " + "~" * 128 + "causal }", "nests 129 levels deep after inlining pattern calls; "
               "the limit is 128")
    assert e.span.line == 2
    with pytest.raises(sd.PatternError, match="the limit is 128"):
        x = sd.causal
        for _ in range(128):
            x = ~x
        sd.compile_pattern(x)


def test_bracket_limit():
    sd.compile_pattern("pattern p() { " + "(" * 99 + "window(3)" + ")" * 99 + " }")  # 100 brackets
    _error("pattern p() { " + "(" * 100 + "window(3)" + ")" * 100 + " }", "brackets nested more than 100 deep")


# ---- D. head counts ------------------------------------------------------------------------


def test_check_a_billion_heads():
    src = "pattern p() {\n heads[0:4] => causal\n heads[4:] => causal & window(h % 7 + 1)\n}"
    p = sd.compile_pattern(src)
    _timed(lambda: p.check(num_heads=10**9), 2)
    _timed(lambda: p.check(num_heads=2**31, num_kv_heads=2**30), 2)
    with pytest.raises(sd.PatternError, match=r"head 4 is not covered"):
        sd.compile_pattern("pattern p() { heads[0:4] => causal }").check(10**9)
    with pytest.raises(sd.PatternError, match=r"size must be at least 1, got 0 for head 1000000"):
        _timed(lambda: sd.compile_pattern("pattern p() { window(1000000 - h) }").check(10**9), 2)
    with pytest.raises(sd.PatternError, match=r"division or modulo by zero for head 900000000"):
        _timed(lambda: sd.compile_pattern("pattern p() { where(q // (h - 900000000) < k) }").check(10**9), 2)
    # a size that is 1 for every head, but not provably so: refused clearly, not enumerated
    p = sd.compile_pattern("pattern p() { window((h * 7919) % 1000003 - (h * 7919) % 1000003 + 1) }")
    p.check(1000)
    with pytest.raises(sd.PatternError, match=r"at most 2\*\*20 heads are checked one by one"):
        _timed(lambda: p.check(10**9))
    with pytest.raises(sd.InputError, match=r"at most 2\*\*31"):
        p.check(2**31 + 1)


def test_cli_check_a_billion_heads(tmp_path, capsys):
    from sparsedsl.cli import main

    f = tmp_path / "duo.attn"
    f.write_text("pattern duo() {\n heads[0:4] => causal\n heads[4:] => causal & window(64)\n}\n")
    assert _timed(lambda: main(["check", str(f), "--heads", "1000000000"]), 5) == 0
    assert "ok" in capsys.readouterr().out


# ---- D. the reference attention on edge inputs ------------------------------------------------


def test_no_queries_still_has_a_gradient():
    p = sd.compile_pattern("pattern p() { causal }")
    q = torch.randn(1, 2, 0, 8, requires_grad=True)
    k = torch.randn(1, 2, 5, 8, requires_grad=True)
    v = torch.randn(1, 2, 5, 8, requires_grad=True)
    out = p(q, k, v, backend="reference")
    assert out.grad_fn is not None
    out.sum().backward()
    assert k.grad is not None and not k.grad.any() and not v.grad.any()


def test_a_nonfinite_value_reaches_only_the_queries_that_see_it():
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 1, 2, 20, 16
    q, k, v = (torch.randn(b, h, n, d, generator=g) for _ in range(3))
    v[0, 0, n - 1] = float("nan")  # only the last query sees the last key
    v[0, 1, 12, 3] = float("inf")
    v[0, 1, 14, 5] = float("-inf")
    v[0, 1, 16, 5] = float("inf")
    p = sd.compile_pattern("pattern p() { causal & (sink(1) | window(6)) }")
    out = p(q, k, v, backend="reference")
    mask = p.mask(n, num_heads=h)
    want = torch.zeros(b, h, n, d, dtype=torch.float64)
    for hh in range(h):
        for i in range(n):
            keys = [j for j in range(n) if mask[hh, i, j]]
            logits = torch.stack([q[0, hh, i].double() @ k[0, hh, j].double() / math.sqrt(d) for j in keys])
            w = torch.softmax(logits, 0)
            want[0, hh, i] = sum(w[t] * v[0, hh, j].double() for t, j in enumerate(keys))
    assert out.isnan().sum() == d + 4  # one row of head 0; +inf - inf in the 4 rows of head 1 that see both
    torch.testing.assert_close(out.double(), want, equal_nan=True, rtol=1e-5, atol=1e-6)
    finite = torch.randn(b, h, n, d, generator=g)  # finite values: the result is unchanged
    assert torch.equal(p(q, k, finite, backend="reference"), p(q, k, finite.clone(), backend="reference"))
