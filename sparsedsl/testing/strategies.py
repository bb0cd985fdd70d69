"""Hypothesis strategies that draw sparsedsl IR and shapes (part of `sparsedsl.testing`).

int_exprs, nonnegative_exprs, at_least, conditions, atoms, head_selections,
head_switches, static_masks, dynamic_atoms and patterns draw IR built with the
smart constructors of ``sparsedsl.ir.build``; lengths, shapes and kernel_shapes
draw sequence lengths and attention shapes. Nothing here imports torch.
"""
from __future__ import annotations

import functools
import string

from hypothesis import strategies as st

from ..ir import build
from ..ir import nodes as ir
from ..atoms import ATOMS, atom_problem
from ..ir.ranges import INT_LIMIT, widest
from .scales import scale_lengths

__all__ = [
    "HEAD_SYMBOLS", "ALL_SYMBOLS", "int_exprs", "nonnegative_exprs", "at_least", "conditions", "atoms",
    "static_masks", "head_switches", "dynamic_atoms", "head_selections", "patterns", "lengths", "shapes",
    "kernel_shapes", "KERNEL_LAYOUTS",
]

HEAD_SYMBOLS = ("h", "H", "hk", "Hk")
ALL_SYMBOLS = ("q", "k", "h", "H", "hk", "Hk")

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
_STATIC_KINDS = tuple(name for name, d in ATOMS.items() if not d.dynamic)  # every static atom of the table


@st.composite
def _atoms(draw, head_dependent: bool):
    """A static atom drawn from its definition (sparsedsl/atoms/): each parameter by its kind
    and minimum, block sizes small (and sometimes the default), arguments with a product
    limit kept inside it."""
    syms = HEAD_SYMBOLS if head_dependent else ()
    kind = draw(st.sampled_from(_STATIC_KINDS))
    d = ATOMS[kind]
    values = []
    for p in d.params:
        if p.kind == "cond":
            values.append(draw(conditions(("q", "k") + syms)))
        elif p.name == "block":
            # small blocks so that short sequences cross block boundaries; the default (64)
            # sometimes, so the printer's "omit the default" path is exercised
            values.append(p.default if not draw(st.integers(0, 5)) else draw(at_least(1, 7, syms)))
        elif p.minimum is not None:
            values.append(draw(at_least(p.minimum, 6, syms)))
        else:  # any integer (an offset): often the default
            values.append(p.default if draw(st.booleans()) else draw(int_exprs(syms, 1)))
    if atom_problem(kind, tuple(values)):  # (a product past 2**62: the second factor 1)
        names = [p.name for p in d.params]
        values[names.index(d.product[1])] = ir.Const(1)
    return build.atom(kind, *values)


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


# ---- kernel shapes ------------------------------------------------------------------------

#: How attention_inputs lays q, k and v out in memory: plain contiguous tensors;
#: views into larger buffers that hold NaN around the rows and past the head
#: dim (an out-of-bounds read poisons the result); views of a [B, L, H, D]
#: buffer transposed to [B, H, L, D] (non-contiguous strides).
KERNEL_LAYOUTS = ("contiguous", "nan_padded", "transposed")

# Lengths around 16-key tiles (the interpreter's tile), and odd primes.
_TILE_LENGTHS = (1, 2, 15, 16, 17, 31, 32, 33, 47, 48, 49)
_PRIME_LENGTHS = (3, 5, 7, 11, 13, 19, 23, 29, 37, 41, 43, 53)


@st.composite
def _kernel_shapes(draw, max_len, max_batch, max_heads, dtypes, layouts, long_lengths=()):
    length = _one_of(st.sampled_from([n for n in _TILE_LENGTHS if n <= max_len] or [1]),
                     st.sampled_from([n for n in _PRIME_LENGTHS if n <= max_len] or [1]),
                     st.integers(1, max(1, max_len)))
    batch = None
    if long_lengths and draw(st.booleans()):  # around the pattern's own scales
        kv_len, batch = draw(st.sampled_from(long_lengths)), 1
        how = draw(st.sampled_from(("other", "decode") + (("same",) if kv_len <= 4 * max_len else ())))
    else:
        kv_len = draw(length)
        how = draw(st.sampled_from(("same", "decode", "other")))
    q_len = kv_len if how == "same" else 1 if how == "decode" else draw(length)
    num_kv_heads = draw(st.sampled_from([n for n in (1, 2) if n <= max_heads] or [1]))
    ratios = [r for r in (1, 2, 4) if num_kv_heads * r <= max_heads] or [1]
    num_heads = num_kv_heads * draw(st.sampled_from(ratios))
    head_dim = draw(st.sampled_from((16, 24, 32, 12)))
    head_dim_v = head_dim if draw(st.booleans()) else draw(st.sampled_from((16, 24, 32, 12)))
    return {"batch": batch or draw(st.integers(1, max_batch)), "num_heads": num_heads, "num_kv_heads": num_kv_heads,
            "q_len": q_len, "kv_len": kv_len, "head_dim": head_dim, "head_dim_v": head_dim_v,
            "dtype": draw(st.sampled_from(dtypes)), "layout": draw(st.sampled_from(layouts))}


def kernel_shapes(max_len: int = 49, max_batch: int = 2, max_heads: int = 4, dtypes: tuple = ("float32", "float16"),
                  layouts: tuple[str, ...] = KERNEL_LAYOUTS, scales: tuple[int, ...] = (),
                  scale_len: int = 4096) -> st.SearchStrategy:
    """dict(batch, num_heads, num_kv_heads, q_len, kv_len, head_dim, head_dim_v,
    dtype, layout), small enough for the Triton interpreter.

    Lengths sit around 16-key tiles (1, 15, 16, 17, 31, 33, ...) or are odd
    primes; q_len equals kv_len, is 1 (decoding) or is drawn independently
    (so both q_len < kv_len and q_len > kv_len occur). Head counts are MHA or
    GQA with groups of 1, 2 or 4 query heads, num_kv_heads 1 or 2. Head dims
    are 16, 24, 32 or 12 (not powers of two: 24, 12), and head_dim_v differs
    from head_dim half of the time. `dtype` is a name ("float32", "float16";
    the interpreter has no bfloat16), `layout` one of KERNEL_LAYOUTS (see
    attention_inputs).

    `scales` (a pattern's own lengths: `pattern_scales(p.plan)`): half of the
    shapes then take kv_len around a scale (`scale_lengths(scales, scale_len)`:
    s - 1, s, s + 1, s + 17, 2s - 1, 2s, 2s + 1), with one batch entry and a short
    q_len (1, a length up to max_len, or kv_len itself up to 4 * max_len): the
    queries sit at the end of a long key sequence, where a window's edge, a
    chunk boundary or a topk budget is crossed, at a cost the interpreter bears."""
    long_lengths = scale_lengths(tuple(scales), scale_len)
    # the scales' lengths the tile-boundary lengths already reach are left to them
    long_lengths = tuple(n for n in long_lengths if n > max_len) or long_lengths
    return _kernel_shapes(max_len, max_batch, max_heads, tuple(dtypes), tuple(layouts), long_lengths)

