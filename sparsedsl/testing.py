"""Hypothesis strategies for property-based tests of sparsedsl and of code that
uses it.

    from hypothesis import given
    from sparsedsl.testing import patterns, shapes

    @given(patterns(), shapes())
    def test_something(p, shape):
        ...

This module needs `hypothesis` (``pip install sparsedsl[test]``); importing
``sparsedsl`` itself never imports it.

Everything generated is small (few nodes, small constants, short sequences) so
that a test can evaluate hundreds of examples on a CPU in seconds.

Strategies
----------
int_exprs(symbols)       integer IR expressions (Const, Sym, IntOp)
conditions(symbols)      condition IR expressions (Bool, Cmp, Logic)
static_masks(max_depth)  mask IR nodes without data-dependent atoms
atoms()                  one static atom
head_switches()          per-head switches (heads[...] => ...)
dynamic_atoms()          landmarks(...) and topk(...) atoms
patterns()               ir.Pattern roots
rendered_patterns()      (source text, the ir.Pattern it must compile to)
pattern_sources()        .attn source text (printed or hand written)
shapes()                 dict(q_len, kv_len, num_heads, num_kv_heads)
kernel_shapes()          small attention shapes for the Triton interpreter (and dtypes, layouts)

Helpers
-------
attention_inputs(shape)  random q, k, v of a kernel_shapes() dict (contiguous, NaN-padded or transposed)
assert_matches_reference(p, q, k, v)
                         run a pattern's kernel and check it against the float64 reference

All IR is built with the smart constructors of ``sparsedsl.ir.build`` and is
in the form the parser produces for its printed text, so
``compile_pattern(to_text(p)).root is p`` holds for every generated ``p``.
"""
from __future__ import annotations

import functools
import string

try:
    from hypothesis import strategies as st
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("sparsedsl.testing needs hypothesis; install it with `pip install hypothesis`") from e

from .ir import build
from .ir import nodes as ir
from .ir.atoms import ATOMS, atom_problem
from .ir.ranges import INT_LIMIT, widest
from .ir.printer import to_text

__all__ = [
    "HEAD_SYMBOLS", "ALL_SYMBOLS", "ENTRY", "int_exprs", "nonnegative_exprs", "at_least", "conditions",
    "atoms", "static_masks", "head_switches", "dynamic_atoms", "head_selections", "patterns", "rendered_patterns",
    "pattern_sources", "lengths", "shapes", "kernel_shapes", "attention_inputs", "assert_matches_reference",
    "KERNEL_LAYOUTS",
]

HEAD_SYMBOLS = ("h", "H", "hk", "Hk")
ALL_SYMBOLS = ("q", "k", "h", "H", "hk", "Hk")
#: The name of the pattern to compile in the text of `rendered_patterns` and
#: `pattern_sources` (those files may also define helper patterns).
ENTRY = "main"

_CMP_OPS = ("<", "<=", ">", ">=", "==", "!=")


def _cached(fn):
    """lru_cache for strategy factories; list arguments are taken as tuples."""
    cached = functools.lru_cache(maxsize=None)(fn)

    def fix(v):
        return tuple(v) if isinstance(v, list) else v

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return cached(*(fix(a) for a in args), **{k: fix(v) for k, v in kwargs.items()})

    return wrapper


# ---- integer expressions ---------------------------------------------------------


def _in_range(x, fallback):
    """x when every step of it stays in [-2**62, 2**62] (the language's rule), else fallback."""
    return x if widest(x) <= INT_LIMIT else fallback


def _binary(op):
    return lambda ab: _in_range(build.int_op(op, *ab), ab[0])


def _pick(draw, *options):
    """Draw from one of `options` (strategies), chosen evenly.

    Used instead of st.one_of, which Hypothesis steers towards the branches
    with the most distinct values (an even mix matters more here)."""
    return draw(options[draw(st.sampled_from(range(len(options))))])


def _one_of(*options) -> st.SearchStrategy:
    """Like st.one_of, with the option chosen evenly (see _pick)."""
    return st.composite(lambda draw: _pick(draw, *options))()


_INT_OPS = ("+", "-", "*", "//", "%", "neg", "abs", "min", "max")


@st.composite
def _ints(draw, symbols: tuple[str, ...], depth: int):
    if depth <= 0 or not draw(st.integers(0, 2)):
        if symbols and draw(st.booleans()):
            if "q" in symbols and "k" in symbols and not draw(st.integers(0, 3)):
                # the distance of the pair, often negative: exercises floor // and %
                a, b = draw(st.permutations((ir.Sym("q"), ir.Sym("k"))))
                return build.int_op("-", a, b)
            return ir.Sym(draw(st.sampled_from(symbols)))
        return ir.Const(draw(st.integers(-6, 9)))
    op = draw(st.sampled_from(_INT_OPS))
    sub = _ints(symbols, depth - 1)
    if op in ("neg", "abs"):
        return build.int_op(op, draw(sub))
    a = draw(sub)
    b = ir.Const(draw(st.integers(1, 7))) if op in ("//", "%") else draw(sub)
    return _in_range(build.int_op(op, a, b), a)


@_cached
def int_exprs(symbols: tuple[str, ...] = HEAD_SYMBOLS, max_depth: int = 2) -> st.SearchStrategy:
    """Integer IR expressions over `symbols` (a subset of h, H, hk, Hk, q, k),
    at most `max_depth` operators deep.

    Operators: + - * // % neg abs min max. The divisor of // and % is always a
    positive constant, so no expression can divide by zero for any head or
    position. Constants fold (``build.int_op``), so the result may be a Const."""
    return _ints(tuple(symbols), max_depth)


@_cached
def nonnegative_exprs(symbols: tuple[str, ...] = HEAD_SYMBOLS) -> st.SearchStrategy:
    """Head-dependent integer expressions that are >= 0 for every head and head
    count: a head symbol, ``e % m``, ``abs(e)``, ``e // m`` of a non-negative
    e, or ``max(0, e)``."""
    e = int_exprs(tuple(symbols), 1)
    m = st.integers(1, 5).map(ir.Const)
    syms = st.sampled_from(tuple(symbols)).map(ir.Sym)
    return _one_of(
        syms,
        st.tuples(e, m).map(_binary("%")),
        e.map(lambda x: build.int_op("abs", x)),
        st.tuples(syms, m).map(_binary("//")),
        e.map(lambda x: build.int_op("max", ir.Const(0), x)),
    )


@_cached
def at_least(minimum: int, spread: int = 5, symbols: tuple[str, ...] = HEAD_SYMBOLS) -> st.SearchStrategy:
    """Atom arguments that are >= `minimum` for every head: a constant, or
    ``minimum + c + e`` / ``max(minimum + c, e)`` with e head-dependent and
    non-negative (e.g. ``1 + h % 3``)."""
    c = st.integers(minimum, minimum + spread).map(ir.Const)
    if not symbols:
        return c
    return _one_of(
        c,
        st.tuples(c, nonnegative_exprs(tuple(symbols))).map(_binary("+")),
        st.tuples(c, int_exprs(tuple(symbols), 1)).map(_binary("max")),
    )


# ---- conditions --------------------------------------------------------------------


@st.composite
def _conds(draw, symbols: tuple[str, ...], depth: int):
    if depth <= 0 or not draw(st.integers(0, 2)):
        if not draw(st.integers(0, 5)):
            return ir.Bool(draw(st.booleans()))
        ints = int_exprs(symbols, 2)
        return build.cmp(draw(st.sampled_from(_CMP_OPS)), draw(ints), draw(ints))
    op = draw(st.sampled_from(("and", "or", "not")))
    sub = _conds(symbols, depth - 1)
    if op == "not":
        return build.logic("not", draw(sub))
    return build.logic(op, draw(sub), draw(sub))


@_cached
def conditions(symbols: tuple[str, ...] = ALL_SYMBOLS, max_depth: int = 2) -> st.SearchStrategy:
    """Conditions (for where(...)) over q, k and the head symbols: comparisons
    of integer expressions joined with and / or / not, and true / false, at
    most `max_depth` logical operators deep. Divisors are positive constants
    only. (Comparisons of constants fold to true / false.)"""
    return _conds(tuple(symbols), max_depth)


# ---- masks -----------------------------------------------------------------------

_BLOCK_DEFAULT = ATOMS["local_blocks"].param("block").default
_STATIC_KINDS = ("full", "none", "causal", "window", "band", "sink", "global", "dilated", "local_blocks",
                 "strided", "where")


@st.composite
def _atoms(draw, head_dependent: bool):
    syms = HEAD_SYMBOLS if head_dependent else ()
    kind = draw(st.sampled_from(_STATIC_KINDS))
    m0 = lambda: draw(at_least(0, 6, syms))  # noqa: E731
    m1 = lambda: draw(at_least(1, 6, syms))  # noqa: E731
    # Small blocks so that short sequences cross block boundaries; the default
    # (64) sometimes, so the printer's "omit the default" path is exercised.
    block = lambda: _BLOCK_DEFAULT if not draw(st.integers(0, 5)) else draw(at_least(1, 7, syms))  # noqa: E731
    a = build.atom
    if kind in ("full", "none", "causal"):
        return a(kind)
    if kind == "window":
        return a(kind, m1())
    if kind == "band":
        return a(kind, m0(), m0())
    if kind in ("sink", "global"):
        return a(kind, m0())
    if kind in ("dilated", "local_blocks"):  # (their product must stay <= 2**62)
        x, y = m1(), (m1() if kind == "dilated" else block())
        return a(kind, x, y) if not atom_problem(kind, (x, y)) else a(kind, x, ir.Const(1))
    if kind == "strided":
        stride, blk = m1(), block()
        offset = ir.Const(0) if draw(st.booleans()) else draw(int_exprs(syms, 1))
        return a(kind, stride, blk, offset)
    return a(kind, draw(conditions(("q", "k") + syms)))


@_cached
def atoms(head_dependent: bool = True) -> st.SearchStrategy:
    """Static atoms with arguments that are legal for every head (including
    where(...) over q and k); head_dependent=False keeps h, H, hk and Hk out."""
    return _atoms(head_dependent)


@_cached
def head_selections() -> st.SearchStrategy:
    """(kind, start, stop) of a heads[...] selection that is not the final
    heads[*]: an index or a slice; bounds are constants (negative too) or
    expressions of H and Hk."""
    bound = _one_of(st.integers(-4, 5).map(ir.Const), int_exprs(("H", "Hk"), 1))
    opt = _one_of(st.none(), bound)
    return _one_of(
        bound.map(lambda b: ("index", b, None)),
        st.tuples(opt, opt).map(lambda t: ("slice", *t)),
        st.just(("all", None, None)),
    )


def _heads(pairs, last) -> ir.Node:
    branches = [ir.Branch(kind, start, stop, body) for (kind, start, stop), body in pairs]
    branches.append(ir.Branch("all", None, None, last))
    return ir.Heads(tuple(branches))


@_cached
def head_switches(max_depth: int = 1, head_dependent: bool = True) -> st.SearchStrategy:
    """Heads nodes: 1 to 3 index / slice / * branches (which may overlap, so the
    first match matters), then heads[*]; branch bodies from static_masks."""
    sub = static_masks(max_depth - 1, head_dependent) if max_depth > 1 else atoms(head_dependent)
    return st.tuples(st.lists(st.tuples(head_selections(), sub), min_size=1, max_size=3), sub) \
        .map(lambda t: _heads(*t))


_MASK_KINDS = ("atom", "union", "inter", "diff", "compl", "heads")


@st.composite
def _masks(draw, depth: int, head_dependent: bool, heads: bool):
    # A composite rather than one_of: Hypothesis skews one_of towards some
    # branches (nested complements everywhere); a drawn kind keeps the mix even.
    kinds = _MASK_KINDS if heads else _MASK_KINDS[:-1]
    kind = draw(st.sampled_from(kinds)) if depth > 0 and draw(st.integers(0, 2)) else "atom"
    if kind == "atom":
        return draw(atoms(head_dependent))
    sub = _masks(depth - 1, head_dependent, heads)
    if kind in ("union", "inter"):
        xs = draw(st.lists(sub, min_size=2, max_size=3))
        return build.union(*xs) if kind == "union" else build.inter(*xs)
    if kind == "diff":
        return build.diff(draw(sub), draw(sub))
    if kind == "compl":
        return build.compl(draw(sub))
    pairs = draw(st.lists(st.tuples(head_selections(), sub), max_size=2))
    return _heads(pairs, draw(sub))


@_cached
def static_masks(max_depth: int = 3, head_dependent: bool = True, heads: bool = True) -> st.SearchStrategy:
    """Mask IR nodes made of static atoms (all of them, where(...) included),
    union, intersection, difference, complement and per-head switches, at
    most `max_depth` operators deep.

    Every switch ends with ``heads[*]`` so every head is covered, and every
    head-dependent argument respects its atom's minimum for every head, so a
    generated mask is valid for any (num_heads, num_kv_heads)."""
    return _masks(max_depth, head_dependent, heads)


@_cached
def dynamic_atoms() -> st.SearchStrategy:
    """landmarks(block) and topk(n, block, score, causal) with constant arguments."""
    block = _one_of(st.integers(1, 16).map(ir.Const), st.just(_BLOCK_DEFAULT))
    return _one_of(
        block.map(lambda b: build.atom("landmarks", b)),
        st.tuples(st.integers(1, 4).map(ir.Const), block, st.sampled_from(("mean", "minmax")),
                  st.booleans().map(ir.Bool)).map(lambda t: build.atom("topk", *t)),
    )


_NAME_CHARS = string.ascii_letters + string.digits + "_"


@_cached
def _pattern_names() -> st.SearchStrategy:
    # The "p_" prefix keeps clear of keywords, atoms and built-in names.
    return _one_of(st.just("p"), st.text(_NAME_CHARS, min_size=1, max_size=8).map(lambda s: "p_" + s))


@_cached
def patterns(max_depth: int = 3, dynamic: bool = False, name: str | None = None) -> st.SearchStrategy:
    """ir.Pattern roots with a static body; with dynamic=True, some bodies put a
    data-dependent atom where it is allowed (an operand of the top-level union,
    optionally under one intersection with static masks)."""
    names = st.just(name) if name is not None else _pattern_names()
    body = static_masks(max_depth)
    if dynamic:
        small = static_masks(min(max_depth, 1))
        dyn = _one_of(
            st.tuples(dynamic_atoms(), small).map(lambda t: build.union(t[1], t[0])),
            st.tuples(small, dynamic_atoms(), small).map(lambda t: build.inter(t[0], build.union(t[1], t[2]))),
        )
        body = _one_of(body, dyn)
    return st.tuples(names, body).map(lambda t: ir.Pattern(*t))


# ---- source text ---------------------------------------------------------------------


def _int_text(draw, v: int) -> str:
    text = str(abs(v))
    if len(text) > 1 and draw(st.integers(0, 4)) == 0:  # INT allows 1_000
        i = draw(st.integers(1, len(text) - 1))
        text = text[:i] + "_" + text[i:]
    return f"(-{text})" if v < 0 else text


class _Module:
    """Collects helper patterns while a pattern is rendered."""

    def __init__(self):
        self.helpers: list[str] = []
        self.count = 0

    def fresh(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"


class _Scope:
    """One pattern being written: its parameters and let statements."""

    def __init__(self, module: _Module, params_allowed: bool, depth: int):
        self.module = module
        self.params: list[str] = []  # "name: type = default" or "name: type"
        self.args: list[str] = []  # call-site keyword arguments for required params
        self.lets: list[str] = []
        self.params_allowed = params_allowed
        self.depth = depth


def _sep(draw) -> str:
    return draw(st.sampled_from((" ", " ", " ", "\n    ", "  # note\n    ")))


def render(draw, node: ir.Node, scope: _Scope, bind: bool = True) -> str:
    """Fully parenthesised text for `node`, drawn with random choices: lets,
    parameters, helper patterns, keyword or positional arguments, comments and
    line breaks. Lowering the text gives `node` back. With bind=False the node
    itself is written out (its operands may still be bound to names)."""
    if bind and ir.is_mask(node) and scope.depth < 3:
        how = draw(st.integers(0, 9))
        if how == 0:
            name = scope.module.fresh("m")
            scope.lets.append(f"let {name} = {render(draw, node, scope, False)}")
            return name
        if how == 1:
            return _helper(draw, node, scope)
    if isinstance(node, ir.Const):
        how = draw(st.integers(0, 5)) if scope.params_allowed else 9
        if how == 0:
            name = scope.module.fresh("n")
            scope.params.append(f"{name}: int = {_int_text(draw, node.value)}")
            return name
        if how == 1 and scope.args is not None and scope.depth > 0:
            name = scope.module.fresh("n")
            scope.params.append(f"{name}: int")
            a = draw(st.integers(-3, 3))
            value = f"({_int_text(draw, node.value - a)} + {_int_text(draw, a)})"
            scope.args.append(f"{name}={value}")
            return name
        if how == 2:
            name = scope.module.fresh("c")
            scope.lets.append(f"let {name} = {_int_text(draw, node.value)}")
            return name
        return _int_text(draw, node.value)
    if isinstance(node, ir.Bool):
        text = "true" if node.value else "false"
        if scope.params_allowed and draw(st.integers(0, 3)) == 0:
            name = scope.module.fresh("f")
            scope.params.append(f"{name}: bool = {text}")
            return name
        return text
    if isinstance(node, ir.Sym):
        return node.name
    r = lambda n: render(draw, n, scope)  # noqa: E731
    if isinstance(node, ir.IntOp):
        if node.op == "neg":
            return f"(-{r(node.args[0])})"
        if node.op in ("min", "max", "abs"):
            return f"{node.op}({', '.join(r(a) for a in node.args)})"
        return f"({r(node.args[0])} {node.op} {r(node.args[1])})"
    if isinstance(node, ir.Cmp):
        return f"({r(node.a)} {node.op} {r(node.b)})"
    if isinstance(node, ir.Logic):
        if node.op == "not":
            return f"(not {r(node.args[0])})"
        return "(" + f"{_sep(draw)}{node.op} ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Union):
        return "(" + f"{_sep(draw)}| ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Inter):
        return "(" + f"{_sep(draw)}& ".join(r(a) for a in node.args) + ")"
    if isinstance(node, ir.Diff):
        return f"({r(node.a)} - {r(node.b)})"
    if isinstance(node, ir.Compl):
        return f"(~{r(node.a)})"
    if isinstance(node, ir.Heads):
        parts = [_branch_text(draw, b, scope) for b in node.branches]
        trailing = "," if draw(st.booleans()) else ""
        return "(" + f",{_sep(draw)}".join(parts) + trailing + ")"
    if isinstance(node, ir.Atom):
        return _atom_text(draw, node, scope)
    raise TypeError(f"cannot render {node!r}")  # pragma: no cover


def _branch_text(draw, b: ir.Branch, scope: _Scope) -> str:
    if b.kind == "all":
        sel = "*"
    elif b.kind == "index":
        sel = render(draw, b.start, scope)
    else:
        start = "" if b.start is None else render(draw, b.start, scope)
        stop = "" if b.stop is None else render(draw, b.stop, scope)
        sel = f"{start}:{stop}"
    return f"heads[{sel}] => {render(draw, b.body, scope)}"


def _atom_text(draw, node: ir.Atom, scope: _Scope) -> str:
    sig = ATOMS[node.kind]
    if not sig.params:
        return draw(st.sampled_from((node.kind, node.kind + "()")))
    items = []
    for p, v in zip(sig.params, node.args):
        if p.default is not None and v == p.default and draw(st.booleans()):
            continue  # leave the default out
        if p.kind == "choice":
            text = v
        else:
            text = render(draw, v, scope)
        items.append((p, text))
    # A positional prefix (in order), then keywords in any order.
    npos = draw(st.integers(0, len(items)))
    # Positional arguments must be the leading parameters, without gaps.
    leading = 0
    for i, (p, _) in enumerate(items):
        if p is sig.params[i]:
            leading = i + 1
        else:
            break
    npos = min(npos, leading)
    kw = items[npos:]
    kw = draw(st.permutations(kw)) if kw else kw
    parts = [t for _, t in items[:npos]] + [f"{p.name}={t}" for p, t in kw]
    if not parts:
        return node.kind
    return f"{node.kind}({', '.join(parts)})"


def _helper(draw, node: ir.Node, scope: _Scope) -> str:
    module = scope.module
    name = module.fresh("helper")
    inner = _Scope(module, True, scope.depth + 1)
    body = _body_text(draw, node, inner)
    module.helpers.append(_pattern_text(name, inner, body))
    if inner.args:
        return f"{name}({', '.join(inner.args)})"
    return draw(st.sampled_from((name, name + "()")))


def _body_text(draw, node: ir.Node, scope: _Scope) -> str:
    if isinstance(node, ir.Heads) and draw(st.booleans()):
        sep = draw(st.sampled_from(("\n    ", ";", "\n\n    # branch\n    ")))
        return sep.join(_branch_text(draw, b, scope) for b in node.branches)
    return render(draw, node, scope, False)


def _pattern_text(name: str, scope: _Scope, body: str) -> str:
    lets = "".join(f"    {let}\n" for let in scope.lets)
    return f"pattern {name}({', '.join(scope.params)}) {{\n{lets}    {body}\n}}\n"


@st.composite
def rendered_patterns(draw, max_depth: int = 3, dynamic: bool = False):
    """(source text, ir.Pattern): hand-written style .attn text (parameters with
    defaults, let statements, helper patterns called with and without keyword
    arguments, comments, line breaks in brackets) defining the pattern `ENTRY`
    (``compile_pattern(text, pattern=ENTRY)``), and the IR it must lower to."""
    p = draw(patterns(max_depth, dynamic, ENTRY))
    module = _Module()
    scope = _Scope(module, True, 0)
    scope.args = None  # the entry pattern's parameters all have defaults
    body = _body_text(draw, p.body, scope)
    parts = [f"# generated\n{h}" for h in module.helpers] + [_pattern_text(ENTRY, scope, body)]
    return "\n".join(parts), p


@_cached
def pattern_sources(max_depth: int = 3, dynamic: bool = False) -> st.SearchStrategy:
    """.attn source text that compiles, defining the pattern `ENTRY`: either a
    generated pattern printed by the IR printer, or hand-written style text
    (see `rendered_patterns`)."""
    printed = patterns(max_depth, dynamic, ENTRY).map(to_text)
    return _one_of(printed, rendered_patterns(max_depth, dynamic).map(lambda t: t[0]))


# ---- shapes ---------------------------------------------------------------------------


@_cached
def lengths(max_len: int = 40, blocks: tuple[int, ...] = (4, 8, 16)) -> st.SearchStrategy:
    """Sequence lengths: 0, 1, around multiples of the block sizes (B-1, B, B+1,
    2B-1, ...), odd lengths and anything up to max_len."""
    near = sorted({n for b in blocks for m in (1, 2) for n in (m * b - 1, m * b, m * b + 1) if 0 <= n <= max_len})
    odd = [n for n in range(1, max_len + 1, 2)]
    return _one_of(st.sampled_from(near or [1]), st.sampled_from(odd or [1]), st.integers(1, max(1, max_len)),
                   st.sampled_from((0, 1, 2)))


@st.composite
def _shapes(draw, max_len, blocks, max_heads):
    kv_len = draw(lengths(max_len, blocks))
    q_len = draw(_one_of(st.just(kv_len), st.just(min(1, kv_len)), lengths(max_len, blocks)))
    num_kv_heads = draw(st.integers(1, max(1, min(3, max_heads))))
    ratios = [r for r in (1, 2, 3, 4) if num_kv_heads * r <= max_heads] or [1]
    num_heads = num_kv_heads * draw(st.sampled_from(ratios))
    return {"q_len": q_len, "kv_len": kv_len, "num_heads": num_heads, "num_kv_heads": num_kv_heads}


def shapes(max_len: int = 40, blocks: tuple[int, ...] = (4, 8, 16), max_heads: int = 8) -> st.SearchStrategy:
    """dict(q_len, kv_len, num_heads, num_kv_heads): lengths around block
    boundaries (q_len == kv_len, decoding with q_len 1, q_len < kv_len and
    q_len > kv_len), and MHA or GQA head counts (num_kv_heads 1..3, groups of
    1..4 query heads) with num_heads <= max_heads."""
    return _shapes(max_len, tuple(blocks), max_heads)


# ---- kernels ---------------------------------------------------------------------------

#: How attention_inputs lays q, k and v out in memory: plain contiguous tensors;
#: views into larger buffers that hold NaN around the rows and past the head
#: dim (an out-of-bounds read poisons the result); views of a [B, L, H, D]
#: buffer transposed to [B, H, L, D] (non-contiguous strides).
KERNEL_LAYOUTS = ("contiguous", "nan_padded", "transposed")

# Lengths around 16-key tiles (the interpreter's tile), and odd primes.
_TILE_LENGTHS = (1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49)
_PRIME_LENGTHS = (3, 5, 7, 11, 13, 19, 23, 29, 37, 41, 43, 53)


@st.composite
def _kernel_shapes(draw, max_len, max_batch, max_heads, dtypes, layouts):
    length = _one_of(st.sampled_from([n for n in _TILE_LENGTHS if n <= max_len] or [1]),
                     st.sampled_from([n for n in _PRIME_LENGTHS if n <= max_len] or [1]),
                     st.integers(1, max(1, max_len)))
    kv_len = draw(length)
    how = draw(st.sampled_from(("same", "decode", "other")))
    q_len = kv_len if how == "same" else 1 if how == "decode" else draw(length)
    num_kv_heads = draw(st.sampled_from([n for n in (1, 2) if n <= max_heads] or [1]))
    ratios = [r for r in (1, 2, 4) if num_kv_heads * r <= max_heads] or [1]
    num_heads = num_kv_heads * draw(st.sampled_from(ratios))
    head_dim = draw(st.sampled_from((16, 24, 32, 12)))
    head_dim_v = head_dim if draw(st.booleans()) else draw(st.sampled_from((16, 24, 32, 12)))
    return {"batch": draw(st.integers(1, max_batch)), "num_heads": num_heads, "num_kv_heads": num_kv_heads,
            "q_len": q_len, "kv_len": kv_len, "head_dim": head_dim, "head_dim_v": head_dim_v,
            "dtype": draw(st.sampled_from(dtypes)), "layout": draw(st.sampled_from(layouts))}


def kernel_shapes(max_len: int = 49, max_batch: int = 2, max_heads: int = 4, dtypes: tuple = ("float32", "float16"),
                  layouts: tuple[str, ...] = KERNEL_LAYOUTS) -> st.SearchStrategy:
    """dict(batch, num_heads, num_kv_heads, q_len, kv_len, head_dim, head_dim_v,
    dtype, layout), small enough for the Triton interpreter.

    Lengths sit around 16-key tiles (1, 15, 16, 17, 31, 33, ...) or are odd
    primes; q_len equals kv_len, is 1 (decoding) or is drawn independently
    (so both q_len < kv_len and q_len > kv_len occur). Head counts are MHA or
    GQA with groups of 1, 2 or 4 query heads, num_kv_heads 1 or 2. Head dims
    are 16, 24, 32 or 12 (not powers of two: 24, 12), and head_dim_v differs
    from head_dim half of the time. `dtype` is a name ("float32", "float16";
    the interpreter has no bfloat16), `layout` one of KERNEL_LAYOUTS (see
    attention_inputs)."""
    return _kernel_shapes(max_len, max_batch, max_heads, tuple(dtypes), tuple(layouts))


def attention_inputs(shape: dict, seed: int = 0, device=None):
    """q, k, v for a kernel_shapes() dict, standard normal from `seed`.

    The layout decides the memory (see KERNEL_LAYOUTS): with "nan_padded" the
    tensors are views into buffers that hold NaN before the first row, past
    q_len / kv_len and past the head dim, so a kernel that reads out of bounds
    produces NaN."""
    import torch

    dtype = getattr(torch, shape["dtype"]) if isinstance(shape["dtype"], str) else shape["dtype"]
    layout = shape.get("layout", "contiguous")
    gen = torch.Generator().manual_seed(seed)
    b, h, hk = shape["batch"], shape["num_heads"], shape["num_kv_heads"]
    lq, lk, d, dv = shape["q_len"], shape["kv_len"], shape["head_dim"], shape.get("head_dim_v", shape["head_dim"])
    out = []
    for heads, length, dim in ((h, lq, d), (hk, lk, d), (hk, lk, dv)):
        x = torch.randn(b, heads, length, dim, generator=gen).to(device=device, dtype=dtype)
        if layout == "nan_padded":  # NaN before and after the rows, and after the head dim
            buf = torch.full((b, heads, length + 10, dim + 5), float("nan"), dtype=dtype, device=x.device)
            buf[:, :, 3:3 + length, :dim] = x
            x = buf[:, :, 3:3 + length, :dim]
        elif layout == "transposed":
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        elif layout != "contiguous":
            raise ValueError(f"unknown layout {layout!r}; expected one of {KERNEL_LAYOUTS}")
        out.append(x)
    return tuple(out)


_DEFAULT_FACTOR = {"float16": 2.0, "bfloat16": 2.0, "float32": 10.0}
# Gradients in half precision: the flash backward rounds P and dS to the input dtype
# for its tensor-core products (as FlashAttention does), the reference's autograd rounds
# other intermediates; measured ratios reach ~2.8 on tiny random cases.
_GRAD_FACTOR = {"float16": 4.0, "bfloat16": 4.0, "float32": 10.0}
# The floor: a tiny absolute error, plus 4 float32 ulps of the values compared
# (the kernel computes in float32: an LSE of 40 cannot be closer than ~4e-6).
_ABS_FLOOR = 1e-7
_ULPS = 4 * 2.0 ** -23


def _errors(x, golden, finite):
    """(mean, max, index of the max) of |x - golden| over the finite entries of
    golden, and (mean, max) of |golden| there."""
    import torch

    diff = torch.where(finite, (x.double() - golden).abs(), torch.zeros_like(golden))
    diff = torch.nan_to_num(diff, nan=float("inf"))
    mag = torch.where(finite, golden.abs(), torch.zeros_like(golden))
    n = int(finite.sum())
    if n == 0:
        return 0.0, 0.0, None, 0.0, 0.0
    idx = tuple(int(i) for i in torch.unravel_index(diff.flatten().argmax(), diff.shape))
    return float(diff.sum()) / n, float(diff.max()), idx, float(mag.sum()) / n, float(mag.max())


def _shared_selection(p, q, k, call_kwargs: dict):
    """The topk selection every run of a check uses ({atom: ids}; None for a static pattern): the
    one given in call_kwargs, else the float32 reference's, then also put in call_kwargs. (The
    kernels' own selection is tested on its own: tests/test_selection.py.)"""
    from .reference.attention import compute_selection

    if not p.is_dynamic:
        return None
    if "selection" in call_kwargs:
        return p._selection_dict(call_kwargs["selection"], q, k)
    selection = compute_selection(p.root, q.detach(), k.detach())
    topk = [a for a in p.dynamic_atoms if a.kind == "topk"]
    if topk:
        call_kwargs["selection"] = tuple(selection[a] for a in topk)
    return selection


def assert_matches_reference(p, q, k, v, *, backend: str = "triton", factor: float | None = None,
                             scale: float | None = None, **call_kwargs):
    """Run attention of the compiled pattern `p` on `backend` and check it
    against the exact reference; return the (out, lse) it checked.

    The rule of FlashAttention/FlexAttention: the reference runs in float64
    ("golden") and in q's dtype; the error of the result against golden (the
    mean and the largest absolute error, of the output and of the LSE) must be
    at most `factor` times the same-dtype reference's error plus a tiny floor
    (1e-7 plus 4 float32 ulps of the values compared: the kernel computes in
    float32). `factor` defaults to 2 for float16/bfloat16, 10 for float32. On
    top:

    * no NaN anywhere in the output or the LSE, and every output element is
      finite where golden is (the kernel allocates its outputs itself, so an
      unwritten element would show up as garbage or NaN);
    * rows that see nothing (golden LSE -inf) have LSE exactly -inf and output
      exactly 0, and no other row has LSE -inf;
    * shapes and dtypes: out [B, H, Lq, Dv] in q's dtype, lse [B, H, Lq].

    Raises AssertionError with a report (errors, shapes, the worst row and a
    hint). `call_kwargs` go to the call (e.g. _config=(16, 16)); for a topk
    pattern, all three runs use one block selection: `selection=` if given,
    else the float32 reference's."""
    import torch

    from .reference.attention import reference_attention

    dname = str(q.dtype).replace("torch.", "")
    if factor is None:
        factor = _DEFAULT_FACTOR.get(dname, 10.0)
    selection = _shared_selection(p, q, k, call_kwargs)
    out, lse = p(q, k, v, scale=scale, backend=backend, return_lse=True, **call_kwargs)
    golden, glse = reference_attention(p.root, q.double(), k.double(), v.double(), scale=scale, selection=selection)
    ref, rlse = reference_attention(p.root, q, k, v, scale=scale, selection=selection, compute_dtype=q.dtype)

    b, h, lq, _ = q.shape
    what = (f"pattern {p.name!r} ({' '.join(p.ir().split())[:300]})\n"
            f"  q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {dname}, scale={scale}, backend={backend!r}"
            + "".join(f", {key}={val!r}" for key, val in call_kwargs.items() if key != "selection"))

    def fail(msg: str, hint: str = ""):
        raise AssertionError(f"{msg}\n  {what}" + (f"\n  hint: {hint}" if hint else ""))

    want_out = (b, h, lq, v.shape[-1])
    if tuple(out.shape) != want_out or out.dtype != q.dtype:
        fail(f"output is {out.dtype} {list(out.shape)}, expected {q.dtype} {list(want_out)}")
    if tuple(lse.shape) != (b, h, lq):
        fail(f"lse has shape {list(lse.shape)}, expected {[b, h, lq]}")
    where_hint = ("print p.mask(Lq, Lk, H, Hk)[h, row] for the row's visible keys; SPARSEDSL_DUMP=DIR writes the "
                  "generated kernel; rerun with backend='reference' to rule out the reference")

    def at(idx):
        if idx is None:
            return ""
        r = idx[2]
        return f" at [b={idx[0]}, h={idx[1]}, row={r}] (query position {k.shape[2] - lq + r})"

    for name, x in (("output", out), ("lse", lse)):
        nan = torch.isnan(x)
        if nan.any():
            first = tuple(int(i) for i in nan.nonzero()[0])
            fail(f"{name} has {int(nan.sum())} NaN element(s), the first{at(first)}",
                 "NaN from masked tiles ((-inf) - (-inf) in the online softmax), or an out-of-bounds read "
                 "of NaN padding; " + where_hint)
    empty = torch.isinf(glse) & (glse < 0)
    k_empty = torch.isinf(lse) & (lse < 0)
    if not torch.equal(empty, k_empty.to(empty.device)):
        bad = (empty != k_empty.to(empty.device)).nonzero()
        first = tuple(int(i) for i in bad[0])
        should = bool(empty[first])
        fail(f"{len(bad)} row(s) have the wrong LSE -inf pattern, the first{at(first)}: "
             f"kernel lse {float(lse[first])}, golden {float(glse[first])} "
             f"({'the row sees nothing' if should else 'the row sees some key'})",
             "rows that see no key must have lse = -inf exactly, and only those; " + where_hint)
    if empty.any():
        leak = out.double()[empty].abs().amax() if out.shape[-1] else torch.tensor(0.0)
        if float(leak) != 0.0:
            fail(f"rows that see nothing must have output exactly 0; found {float(leak):.3g}",
                 "the normalisation of empty rows (l = 0) must write 0")
    finite = torch.isfinite(golden)
    bad_fin = finite & ~torch.isfinite(out.double())
    if bad_fin.any():
        first = tuple(int(i) for i in bad_fin.nonzero()[0])
        fail(f"output has {int(bad_fin.sum())} non-finite element(s) where golden is finite, the first{at(first)}",
             "an output element left unwritten, overflow, or an out-of-bounds read; " + where_hint)

    e_mean, e_max, e_idx, g_mean, g_max = _errors(out, golden, finite)
    r_mean, r_max = _errors(ref, golden, finite)[:2]
    gfin = torch.isfinite(glse)
    l_mean, l_max, l_idx, gl_mean, gl_max = _errors(lse, glse, gfin)
    lr_mean, lr_max = _errors(rlse, glse, gfin)[:2]
    checks = [("output mean abs error", e_mean, r_mean, g_mean, e_idx),
              ("output max abs error", e_max, r_max, g_max, e_idx),
              ("lse mean abs error", l_mean, lr_mean, gl_mean, l_idx),
              ("lse max abs error", l_max, lr_max, gl_max, l_idx)]
    for label, got, ref_err, magnitude, idx in checks:
        allowed = factor * ref_err + _ABS_FLOOR + _ULPS * magnitude
        if got <= allowed:
            continue
        lines = [f"{label} {got:.3e} exceeds {allowed:.3e} = {factor:g} x the same-dtype reference's ({ref_err:.3e}) "
                 f"+ a floor",
                 f"  output: mean {e_mean:.3e}, max {e_max:.3e}{at(e_idx)}; reference ({dname}): mean {r_mean:.3e}, "
                 f"max {r_max:.3e}",
                 f"  lse:    mean {l_mean:.3e}, max {l_max:.3e}{at(l_idx)}; reference ({dname}): mean {lr_mean:.3e}, "
                 f"max {lr_max:.3e}"]
        if idx is not None:
            bb, hh = idx[:2]
            if label.startswith("output"):
                err = (out.double() - golden).abs().nan_to_num(float("inf"))
                err_rows = err.amax(-1)[bb, hh] if out.shape[-1] else torch.zeros(lq)
                row_limit = factor * r_max + _ABS_FLOOR + _ULPS * g_max
            else:
                err_rows = torch.where(gfin, (lse.double() - glse).abs(), torch.zeros_like(glse))[bb, hh]
                row_limit = factor * lr_max + _ABS_FLOOR + _ULPS * gl_max
            wrong = (err_rows > row_limit).nonzero().flatten().tolist()
            lines.append(f"  rows of [b={bb}, h={hh}] off by more than {row_limit:.2e}: "
                         f"{wrong[:12]}{' ...' if len(wrong) > 12 else ''}")
        fail("\n".join(lines),
             "a few wrong rows usually mean a mask or tile-bound bug (a key skipped or seen twice); errors "
             "everywhere a precision or scale problem; " + where_hint)
    return out, lse


def _most_attention_on_a_key(p, q, k, scale) -> float:
    """max over keys of sum_i P_ij over the queries (and query heads) that see key j, in float64."""
    import torch

    from .reference.attention import compute_selection, visible

    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    if q.numel() == 0 or k.numel() == 0:
        return 0.0
    sel = compute_selection(p.root, q, k) if p.is_dynamic else None
    vis = visible(p.root, lq, lk, h, hk, torch.arange(lq, device=q.device), sel).expand(b, h, lq, lk)
    kk = k.double().repeat_interleave(h // hk, 1)
    s = (q.double() @ kk.transpose(-1, -2)) * (d ** -0.5 if scale is None else scale)
    prob = torch.softmax(s.masked_fill(~vis, float("-inf")), -1).nan_to_num(0.0)
    return float(prob.view(b, hk, h // hk, lq, lk).sum((2, 3)).max())


def assert_grads_match_reference(p, q, k, v, dout=None, *, backend: str = "triton", factor: float | None = None,
                                 scale: float | None = None, lse_weight: float = 0.0, seed: int = 0, **call_kwargs):
    """Check the gradients of attention of `p` on `backend` against the exact
    reference; return (dq, dk, dv) as checked.

    The loss is sum(out * dout) + lse_weight * sum(lse) (dout: standard normal
    from `seed` unless given; any strides). The rule is
    assert_matches_reference's: each gradient's mean and largest absolute
    error against the float64 reference ("golden") must be at most `factor`
    (default 4 for float16/bfloat16, 10 for float32) times the error of the
    same-dtype reference, plus a tiny floor and the error the flash backward
    takes from reading O as stored (rounded to q's dtype; computed from the
    exact O). On top: no NaN; finite wherever golden is; query rows that see nothing get a gradient of exactly 0. q, k
    and v keep their strides (a NaN-padded view stays one)."""
    import torch

    from .reference.attention import reference_attention

    dname = str(q.dtype).replace("torch.", "")
    if factor is None:
        factor = _GRAD_FACTOR.get(dname, 10.0)
    selection = _shared_selection(p, q, k, call_kwargs)
    if dout is None:
        gen = torch.Generator().manual_seed(seed)
        dout = torch.randn((*q.shape[:3], v.shape[-1]), generator=gen).to(device=q.device, dtype=q.dtype)

    def grads(fn, dtype):
        xs = [t.detach() if dtype == q.dtype else t.detach().to(dtype) for t in (q, k, v)]
        xs = [x.requires_grad_() for x in xs]
        out, lse = fn(*xs)
        loss = (out.to(dtype) * dout.to(dtype)).sum() + lse_weight * lse.to(dtype).sum()
        return torch.autograd.grad(loss, xs, allow_unused=True), lse, out.detach()

    got, _, _ = grads(lambda a, b, c: p(a, b, c, scale=scale, backend=backend, return_lse=True, **call_kwargs),
                      q.dtype)
    golden, glse, gout = grads(lambda a, b, c: reference_attention(p.root, a, b, c, scale=scale, selection=selection),
                               torch.float64)
    ref, _, _ = grads(lambda a, b, c: reference_attention(p.root, a, b, c, scale=scale, selection=selection,
                                                          compute_dtype=q.dtype), q.dtype)
    what = (f"pattern {p.name!r} ({' '.join(p.ir().split())[:300]})\n"
            f"  q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {dname}, scale={scale}, backend={backend!r}, "
            f"lse_weight={lse_weight}" + "".join(f", {key}={val!r}" for key, val in call_kwargs.items()
                                                 if key != "selection"))
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    # The flash backward forms dS = P * (dP - delta) with delta = rowsum(dO * O): where
    # the two nearly cancel (a row that sees one key has dS = 0 exactly), float32 leaves
    # a few ulps of the cancelled terms, |P dP| <= |dO| |V|. That, times |K| (dq) or
    # |Q| summed over the queries of a key (dk), joins the floor.
    norm = lambda t: float(t.double().norm(dim=-1).max()) if t.numel() else 0.0  # noqa: E731
    top = lambda t: float(t.double().abs().max()) if t.numel() else 0.0  # noqa: E731
    eff_scale = abs(q.shape[-1] ** -0.5 if scale is None else scale)
    cancel = eff_scale * (norm(dout) * norm(v) + abs(lse_weight))
    most = _most_attention_on_a_key(p, q, k, scale)
    terms = {"dq": cancel * top(k), "dk": cancel * top(q) * most, "dv": 0.0}
    # The flash backward reads O as stored, rounded to q's dtype: delta_i = dO_i . O_i is
    # off by |dO_i . (round(O_i) - O_i)| (from the exact O), and dS_ij by P_ij times that.
    # Its mean and largest over the rows, times |K| (dq) or |Q| and a key's attention (dk).
    rounded = gout.to(q.dtype).double()
    d_err = (dout.double().to(gout.device) * (rounded - gout).nan_to_num()).sum(-1).abs()
    d_mean, d_max = (float(d_err.mean()), float(d_err.max())) if d_err.numel() else (0.0, 0.0)
    stored = {"dq": eff_scale * top(k), "dk": eff_scale * top(q) * most, "dv": 0.0}
    for name, x, g, r, like in zip(("dq", "dk", "dv"), got, golden, ref, (q, k, v)):
        x, g, r = (zero(like) if t is None else t for t in (x, g, r))
        if tuple(x.shape) != tuple(like.shape):
            raise AssertionError(f"{name} has shape {list(x.shape)}, expected {list(like.shape)}\n  {what}")
        if torch.isnan(x).any():
            first = tuple(int(i) for i in torch.isnan(x).nonzero()[0])
            raise AssertionError(f"{name} has {int(torch.isnan(x).sum())} NaN element(s), the first at {first}\n"
                                 f"  {what}\n  hint: NaN from a row that sees nothing (lse -inf) or an "
                                 "out-of-bounds read of NaN padding")
        finite = torch.isfinite(g)
        if (finite & ~torch.isfinite(x.double())).any():
            raise AssertionError(f"{name} is not finite where golden is\n  {what}")
        e_mean, e_max, e_idx, g_mean, g_max = _errors(x, g, finite)
        r_mean, r_max = _errors(r, g, finite)[:2]
        for label, err, ref_err, magnitude, d in (("mean", e_mean, r_mean, g_mean, d_mean),
                                                  ("max", e_max, r_max, g_max, d_max)):
            allowed = factor * ref_err + _ABS_FLOOR + _ULPS * (magnitude + terms[name]) + stored[name] * d
            if err > allowed:
                raise AssertionError(
                    f"{name} {label} abs error {err:.3e} exceeds {allowed:.3e} = {factor:g} x the same-dtype "
                    f"reference's ({ref_err:.3e}) + a floor; worst at {e_idx} (golden magnitude: mean {g_mean:.3e}, "
                    f"max {g_max:.3e})\n  {what}\n  hint: a wrong gradient in a few rows or keys usually means a "
                    "tile-bound bug in the transposed plan (dK/dV) or the key plan (dQ)")
    empty = torch.isinf(glse) & (glse < 0)
    if empty.any() and got[0] is not None and got[0].shape[-1]:
        leak = float(got[0].double()[empty.to(got[0].device)].abs().max())
        if leak != 0.0:
            raise AssertionError(f"query rows that see nothing must get dq exactly 0; found {leak:.3g}\n  {what}")
    return got
