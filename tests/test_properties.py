"""Property tests of the compiler front end and the static mask API, on random
patterns from sparsedsl.testing:

* printer / parser round trip, and text -> IR -> text stability;
* the Python builder and the language build the very same IR node;
* CompiledPattern.mask() against an independent per-element oracle (naive.py);
* the algebra of masks (union, intersection, difference, complement);
* block_layout() and density() against the dense mask;
* verify() and to_graph() on every generated pattern.

Profiles (conftest.py): CI=1 for the deterministic "ci" profile.
"""
from __future__ import annotations

import operator
import re
from functools import reduce
from pathlib import Path

import pytest
import torch

pytest.importorskip("hypothesis")

from hypothesis import assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import naive  # noqa: E402
import sparsedsl as sd  # noqa: E402
from sparsedsl.builder import Int, Mask  # noqa: E402
from sparsedsl.ir import build  # noqa: E402
from sparsedsl.ir import nodes as ir  # noqa: E402
from sparsedsl.ir.graph import VerifyError, to_graph, verify  # noqa: E402
from sparsedsl.ir.printer import to_text  # noqa: E402
from sparsedsl.testing import (ENTRY, atoms, conditions, head_switches, int_exprs, pattern_sources,  # noqa: E402
                               patterns, rendered_patterns, shapes, static_masks)

PATTERNS = Path(__file__).resolve().parent.parent / "patterns"

# Fewer examples for the tests that evaluate many masks per example, more for
# the cheap ones that aim at one feature.
_HEAVY = settings(max_examples=max(10, settings().max_examples * 3 // 4))
_MANY = settings(max_examples=settings().max_examples * 3)


def compiled(mask: ir.Node, name: str = "p") -> sd.CompiledPattern:
    return sd.compile_pattern(Mask(mask), pattern=name)


def dense(mask: ir.Node, shape: dict):
    return compiled(mask).mask(shape["q_len"], shape["kv_len"], shape["num_heads"], shape["num_kv_heads"])


# ---- the Python builder, driven by an IR tree ------------------------------------------

_INT_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "//": operator.floordiv, "%": operator.mod}
_CMP_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq,
            "!=": operator.ne}
_BUILDER_ATOMS = {"window": sd.window, "band": sd.band, "sink": sd.sink, "global": sd.global_,
                  "dilated": sd.dilated, "local_blocks": sd.local_blocks, "strided": sd.strided, "chunked": sd.chunked,
                  "random_blocks": sd.random_blocks, "where": sd.where, "landmarks": sd.landmarks, "topk": sd.topk}


def to_builder(node: ir.Node):
    """The same structure written with the public builder API (operators and
    functions of sparsedsl): a Mask, Int, Cond or a plain int / bool."""
    if isinstance(node, ir.Const):
        return node.value
    if isinstance(node, ir.Bool):
        return node.value
    if isinstance(node, ir.Sym):
        return getattr(sd, node.name)
    if isinstance(node, ir.IntOp):
        args = [to_builder(a) for a in node.args]
        if node.op == "neg":
            return -args[0]
        if node.op == "abs":
            return abs(args[0])
        if node.op == "min":
            return sd.minimum(*args)
        if node.op == "max":
            return sd.maximum(*args)
        return _INT_OPS[node.op](*args)
    if isinstance(node, ir.Cmp):
        a, b = to_builder(node.a), to_builder(node.b)
        if isinstance(a, int):  # `3 < x` would reflect to x > 3
            a = Int(ir.Const(a))
        return _CMP_OPS[node.op](a, b)
    if isinstance(node, ir.Logic):
        args = [to_builder(a) for a in node.args]
        if node.op == "not":
            return ~args[0]
        return reduce(operator.and_ if node.op == "and" else operator.or_, args)
    if isinstance(node, ir.Atom):
        if not node.args:
            return {"full": sd.full, "none": sd.none, "causal": sd.causal}[node.kind]
        return _BUILDER_ATOMS[node.kind](*(to_builder(a) if isinstance(a, ir.Node) else a for a in node.args))
    if isinstance(node, ir.Union):
        return reduce(operator.or_, (to_builder(a) for a in node.args))
    if isinstance(node, ir.Inter):
        return reduce(operator.and_, (to_builder(a) for a in node.args))
    if isinstance(node, ir.Diff):
        return to_builder(node.a) - to_builder(node.b)
    if isinstance(node, ir.Compl):
        return ~to_builder(node.a)
    if isinstance(node, ir.Heads):
        branches = []
        for b in node.branches:
            if b.kind == "all":
                sel = "*"
            elif b.kind == "index":
                sel = to_builder(b.start)
            else:
                sel = slice(None if b.start is None else to_builder(b.start),
                            None if b.stop is None else to_builder(b.stop))
            branches.append((sel, to_builder(b.body)))
        return sd.heads(branches)
    raise TypeError(f"no builder form for {node!r}")


def walk(node: ir.Node):
    """Every distinct node reachable from `node` (by the node's fields)."""
    seen: dict[int, ir.Node] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        for value in n.fields():
            for v in (value if isinstance(value, tuple) else (value,)):
                if isinstance(v, ir.Node):
                    stack.append(v)
    return list(seen.values())


# ---- printer / parser --------------------------------------------------------------------


@_MANY
@given(patterns(dynamic=True))
def test_print_parse_roundtrip(p):
    text = to_text(p)
    note(text)
    c = sd.compile_pattern(text)
    assert c.root is p
    assert c.ir() == text


@_MANY
@given(st.one_of(int_exprs(("q", "k", "h", "H", "hk", "Hk"), 3), conditions(max_depth=3)))
def test_expression_print_parse_roundtrip(e):
    # Integer expressions and conditions, deeper than inside random patterns.
    node = build.atom("where", e if ir.is_bool(e) else build.cmp("<", e, ir.Sym("k")))
    p = ir.Pattern("p", node)
    assert sd.compile_pattern(to_text(p)).root is p


@given(pattern_sources(dynamic=True))
def test_text_ir_text_is_stable(src):
    note(src)
    first = sd.compile_pattern(src, pattern=ENTRY)
    text = first.ir()
    note(text)
    second = sd.compile_pattern(text)
    assert second.root is first.root
    assert second.ir() == text


@given(rendered_patterns(dynamic=True))
def test_hand_written_source_lowers_to_the_ir(case):
    src, p = case
    note(src)
    assert sd.compile_pattern(src, pattern=ENTRY).root is p


def _shipped():
    out = []
    for path in sorted(PATTERNS.glob("*.attn")):
        for name in re.findall(r"^pattern\s+(\w+)", path.read_text(), flags=re.M):
            out.append(pytest.param(path, name, id=f"{path.stem}:{name}"))
    return out


@pytest.mark.parametrize("path,name", _shipped())
def test_shipped_patterns_roundtrip(path, name):
    try:
        c = sd.compile_pattern(str(path), pattern=name)
    except sd.PatternError as e:  # a pattern with a required parameter
        pytest.skip(str(e))
    text = c.ir()
    again = sd.compile_pattern(text)
    assert again.root is c.root
    assert again.ir() == text


@pytest.mark.parametrize("cond", ["true and (false and q < k)", "(q < k and true) and (true and k > 1)",
                                  "false or (true or q < k)", "q < k or (false or (false or k < 2))"])
def test_logic_literal_chain_roundtrip(cond):
    # Regression: build.logic once kept literals when flattening, so
    # `true and (false and x)` became Logic(and, (true, false, x)), printed as
    # `true and false and x`, which parses back as Logic(and, (false, x)).
    c = sd.compile_pattern(f"pattern p() {{\n    where({cond})\n}}\n")
    assert sd.compile_pattern(c.ir()).root is c.root


# ---- builder == language --------------------------------------------------------------


@given(rendered_patterns(dynamic=True))
def test_builder_and_language_agree(case):
    src, p = case
    m = to_builder(p.body)
    assert isinstance(m, Mask)
    assert m.node is p.body
    from_builder = sd.compile_pattern(m, pattern=ENTRY)
    from_text = sd.compile_pattern(src, pattern=ENTRY)
    assert from_builder.root is from_text.root


@_MANY
@given(st.one_of(int_exprs(("q", "k", "h", "H", "hk", "Hk"), 3), conditions(max_depth=3)))
def test_builder_expressions_agree(e):
    # Integer expressions and conditions through the builder's operators, and
    # through the language.
    b = to_builder(e)
    node = b if isinstance(b, ir.Node) else ir.Const(b) if type(b) is int else ir.Bool(b) \
        if type(b) is bool else b.node
    assert node is e
    cond = e if ir.is_bool(e) else build.cmp("<", e, ir.Sym("k"))
    src = f"pattern p() {{\n    where({to_text(cond)})\n}}\n"
    assert sd.compile_pattern(sd.where(to_builder(cond))).root.body is sd.compile_pattern(src).root.body


def test_builder_symbolic_head_index():
    m = sd.heads([(sd.H - 1, sd.causal), ("*", sd.full)])
    src = "pattern p() {\n    heads[H - 1] => causal\n    heads[*] => full\n}\n"
    assert m.node is sd.compile_pattern(src).root.body


# ---- masks against the oracle ----------------------------------------------------------------


def check_against_oracle(p: ir.Pattern, shape: dict) -> None:
    lq, lk, nh, nkv = shape["q_len"], shape["kv_len"], shape["num_heads"], shape["num_kv_heads"]
    got = compiled(p.body, p.name).mask(lq, lk, nh, nkv)
    assert tuple(got.shape) == (nh, lq, lk)
    assert got.dtype == torch.bool
    if lq == lk and nh == nkv:  # the defaults: kv_len = q_len, num_kv_heads = num_heads
        assert torch.equal(compiled(p.body, p.name).mask(lq, num_heads=nh), got)
    want = naive.dense(p, lq, lk, nh, nkv)
    got = got.tolist()
    if got != want:
        for h in range(nh):
            for i in range(lq):
                for j in range(lk):
                    assert got[h][i][j] == want[h][i][j], (
                        f"head {h}, row {i} (q={lk - lq + i}), key {j}: mask {got[h][i][j]}, "
                        f"oracle {want[h][i][j]}")


@_HEAVY
@given(patterns(), shapes(max_len=20, max_heads=6))
def test_mask_matches_naive_oracle(p, shape):
    note(to_text(p))
    check_against_oracle(p, shape)


@_MANY
@given(atoms(), shapes(max_len=20, max_heads=6))
def test_atoms_match_naive_oracle(atom, shape):
    note(to_text(atom))
    check_against_oracle(ir.Pattern("p", atom), shape)


@_MANY
@given(conditions(), shapes(max_len=16, max_heads=6))
def test_where_conditions_match_naive_oracle(cond, shape):
    note(to_text(cond))
    check_against_oracle(ir.Pattern("p", build.atom("where", cond)), shape)


@_MANY
@given(head_switches(), shapes(max_len=10, max_heads=8))
def test_head_switches_match_naive_oracle(switch, shape):
    note(to_text(ir.Pattern("p", switch)))
    check_against_oracle(ir.Pattern("p", switch), shape)


# ---- mask algebra ---------------------------------------------------------------------------

_small = static_masks(2)
_algebra_shapes = shapes(max_len=24, max_heads=4)
_FULL = build.atom("full")
_NONE = build.atom("none")


@_HEAVY
@given(_small, _small, _small, _algebra_shapes)
def test_union_and_intersection_laws(a, b, c, shape):
    M = lambda x: dense(x, shape)  # noqa: E731
    A, B, C = M(a), M(b), M(c)
    U, I = build.union, build.inter
    assert (M(U(a, b)) == (A | B)).all()
    assert (M(I(a, b)) == (A & B)).all()
    # commutative
    assert (M(U(a, b)) == M(U(b, a))).all()
    assert (M(I(a, b)) == M(I(b, a))).all()
    # associative
    assert (M(U(a, U(b, c))) == ((A | B) | C)).all()
    assert (M(I(I(a, b), c)) == (A & (B & C))).all()
    # distributive
    assert (M(I(a, U(b, c))) == M(U(I(a, b), I(a, c)))).all()
    assert (M(U(a, I(b, c))) == M(I(U(a, b), U(a, c)))).all()
    # idempotent, absorption
    assert (M(U(a, a)) == A).all()
    assert (M(I(a, a)) == A).all()
    assert (M(U(a, I(a, b))) == A).all()


@_HEAVY
@given(_small, _small, _algebra_shapes)
def test_complement_and_difference_laws(a, b, shape):
    M = lambda x: dense(x, shape)  # noqa: E731
    A, B = M(a), M(b)
    U, I, D, N = build.union, build.inter, build.diff, build.compl
    assert (M(N(a)) == ~A).all()
    assert (M(N(N(a))) == A).all()
    # De Morgan
    assert (M(N(U(a, b))) == M(I(N(a), N(b)))).all()
    assert (M(N(I(a, b))) == M(U(N(a), N(b)))).all()
    # difference
    assert (M(D(a, b)) == M(I(a, N(b)))).all()
    assert (M(D(a, b)) == (A & ~B)).all()
    assert not M(D(a, a)).any()
    assert M(U(a, N(a))).all()
    assert not M(I(a, N(a))).any()


@given(_small, _algebra_shapes)
def test_full_and_none_identities(a, shape):
    M = lambda x: dense(x, shape)  # noqa: E731
    A = M(a)
    U, I, D, N = build.union, build.inter, build.diff, build.compl
    assert M(_FULL).all() and not M(_NONE).any()
    assert (M(U(a, _NONE)) == A).all()
    assert (M(I(a, _FULL)) == A).all()
    assert M(U(a, _FULL)).all()
    assert not M(I(a, _NONE)).any()
    assert (M(D(a, _NONE)) == A).all()
    assert not M(D(a, _FULL)).any()
    assert (M(D(_FULL, a)) == M(N(a))).all()
    assert (M(N(_FULL)) == M(_NONE)).all()


# ---- block layout and density ---------------------------------------------------------------


@given(patterns(), shapes(max_len=40, blocks=(2, 3, 4, 8, 16), max_heads=4), st.sampled_from((1, 2, 3, 4, 5, 8, 16)))
def test_block_layout_and_density_match_dense(p, shape, block):
    note(to_text(p))
    lq, lk, nh, nkv = shape["q_len"], shape["kv_len"], shape["num_heads"], shape["num_kv_heads"]
    c = compiled(p.body, p.name)
    m = c.mask(lq, lk, nh, nkv)
    layout = c.block_layout(lq, lk, block, nh, nkv)
    assert layout.dtype == torch.int8
    assert tuple(layout.shape) == (nh, -(-lq // block), -(-lk // block))
    assert layout.tolist() == naive.block_layout(m.tolist(), lq, lk, block)
    density = c.density(lq, lk, nh, nkv)
    want = m.sum().item() / m.numel() if m.numel() else 0.0
    assert density == pytest.approx(want, abs=1e-12)


def test_block_layout_without_keys():
    layout = sd.compile_pattern(sd.full).block_layout(1, 0, block=4)
    assert tuple(layout.shape) == (1, 1, 0)


def _layout_from_dense(m: torch.Tensor, block: int) -> torch.Tensor:
    h, lq, lk = m.shape
    nq, nk = -(-lq // block), -(-lk // block)
    pad = torch.nn.functional.pad
    vis = pad(m, (0, nk * block - lk, 0, nq * block - lq)).view(h, nq, block, nk, block)
    inside = pad(torch.ones_like(m), (0, nk * block - lk, 0, nq * block - lq)).view(h, nq, block, nk, block)
    any_ = vis.any(dim=(2, 4))
    all_ = (vis | ~inside).all(dim=(2, 4))
    return torch.where(all_, 2, any_.to(torch.int8)).to(torch.int8)


@pytest.mark.parametrize("q_len,kv_len", [(4100, 4100), (4093, 4101), (1, 4100)])
def test_large_sizes_are_chunked_correctly(q_len, kv_len):
    # Big enough that mask(), block_layout() and density() work in several
    # chunks of query rows; checked against the formulas written with torch.
    src = ("pattern p() {\n    heads[0] => causal & (window(300) | sink(5))\n"
           "    heads[*] => local_blocks(2, block=100) | where((q - k) % 7 == 0)\n}\n")
    c = sd.compile_pattern(src)
    m = c.mask(q_len, kv_len, 2)
    q = torch.arange(kv_len - q_len, kv_len).view(-1, 1)
    k = torch.arange(kv_len).view(1, -1)
    d = q // 100 - k // 100
    assert torch.equal(m[0], (k <= q) & ((q - 300 < k) | (k < 5)))
    assert torch.equal(m[1], ((d >= 0) & (d < 2)) | ((q - k) % 7 == 0))
    assert torch.equal(c.block_layout(q_len, kv_len, 128, 2), _layout_from_dense(m, 128))
    assert c.density(q_len, kv_len, 2) == pytest.approx(m.sum().item() / m.numel(), abs=1e-12)


@pytest.mark.parametrize("name", ["heads", "window", "my pattern", "true"])
def test_builder_pattern_name_roundtrip(name):
    try:
        c = sd.compile_pattern(sd.causal, pattern=name)
    except sd.PatternError:  # rejecting the name up front is fine too
        return
    assert sd.compile_pattern(c.ir()).root is c.root


# ---- verify and the graph -------------------------------------------------------------------


def _rebuild(node):
    """A fresh construction of the same tree, bottom up (interning must return `node`)."""
    def value(v):
        if isinstance(v, tuple):
            return tuple(value(x) for x in v)
        return _rebuild(v) if isinstance(v, ir.Node) else v
    return type(node)(*(value(v) for v in node.fields()))


@given(patterns(dynamic=True))
def test_verify_and_graph(p):
    verify(p)
    g = to_graph(p)
    verify(g)
    assert g.graph["root"] is p
    distinct = walk(p)
    assert len(g) == len(distinct)
    assert {id(n) for n in g.nodes} == {id(n) for n in distinct}
    for n in distinct:
        kids = n.children()
        assert g.out_degree(n) == len({id(k) for k in kids})
        for i, kid in enumerate(kids):
            assert i in g.edges[n, kid]["index"]
    assert _rebuild(p) is p
    assert set(sd.compile_pattern(Mask(p.body), pattern=p.name).graph().nodes) == set(g.nodes)


@given(patterns())
def test_shared_subpattern_is_one_graph_node(p):
    a = p.body
    shared = ir.Pattern(p.name, build.diff(a, build.compl(a)))
    verify(shared)
    g = to_graph(shared)
    assert len(g) == len(walk(p)) + 2
    assert g.in_degree(a) == 2
    twice = ir.Pattern(p.name, build.union(build.diff(a, build.atom("causal")),
                                           build.diff(build.atom("causal"), a)))
    g2 = to_graph(twice)
    assert len(g2) == len(walk(twice))
    assert sum(1 for n in g2.nodes if n is a) == 1


@given(patterns(), st.sampled_from([
    ("window", (ir.Const(0),)),
    ("dilated", (ir.Const(1), ir.Const(0))),
    ("local_blocks", (ir.Const(1), ir.Const(0))),
    ("where", (build.cmp("<", ir.Const(0), ir.Const(1)),)),  # fine: a folded condition
    ("sink", (ir.Sym("q"),)),
]))
def test_verify_rejects_broken_atoms(p, bad):
    node = ir.Atom(*bad)
    root = ir.Pattern(p.name, build.union(p.body, node))
    if bad[0] == "where":
        verify(root)
    else:
        with pytest.raises(VerifyError):
            verify(root)
