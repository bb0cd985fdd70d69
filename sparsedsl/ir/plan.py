"""The kernel plan: everything code generation and the launches read of a
pattern, as data. passes/plan.py builds it (the last step of the compile
pipeline, run once per pattern: runtime/ops.py plan_for); kernels/ reads it and
never builds one. Data only: this module sits below both passes/ and kernels/.

    KernelPlan   the pattern: its branches, layout and dynamic parts
    BranchPlan   one head branch: its condition, element mask and segments
    Topk         a topk atom's arguments, decoded once
    TopkPart     a branch's selected key blocks (its Topk and element mask)
    Segment      what the kernels read of a key (or query) segment
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import build
from . import nodes as ir


_ZERO = ir.Const(0)


@dataclass(frozen=True)
class Probe:
    """A block-level test of a segment's tiles: every pair (q, k) of the segment that may be
    visible satisfies `cond` at qb = q // q_block, kb = k // k_block (`cond` is over the symbols
    qb, kb and the heads), so a tile none of whose (qb, kb) blocks satisfies it holds no
    visible pair of the segment and is skipped. From a where(...) comparison that has no
    closed form but reads positions only through q // q_block and k // k_block (BigBird's
    hashed random blocks): its tiles are checked, not computed."""

    cond: ir.Node
    q_block: int
    k_block: int


@dataclass(frozen=True)
class Segment:
    """Keys in [lo, hi) of a query tile (transposed: queries of a key tile);
    with `stride`, only those in blocks j with (j + offset) % stride == 0; with
    `guard`, only for heads where it holds. Keys of the segment inside
    [full_lo, full_hi) are visible to every query of the tile (the kernel skips
    the element mask there). `probe`: tests of which one must hold somewhere in a tile for
    the tile to be walked (none: every tile is). The atoms' definitions and the bounds
    analysis build them (atoms/segments.py); the kernels read them."""

    lo: ir.Node
    hi: ir.Node
    full_lo: ir.Node = _ZERO
    full_hi: ir.Node = _ZERO
    block: ir.Node | None = None
    stride: ir.Node | None = None
    offset: ir.Node | None = None
    guard: ir.Node = ir.Bool(True)
    probe: tuple[Probe, ...] = ()

    @property
    def strided(self) -> bool:
        return self.stride is not None

    @property
    def has_full(self) -> bool:
        """Whether some keys may be full (an interval other than the empty [0, 0))."""
        return not (self.full_lo == _ZERO and self.full_hi == _ZERO)

    def meet(self, other: "Segment") -> "Segment":
        """Keys in both segments (keeps this segment's stride filter)."""
        def both(op, a, b):
            return a if a is b else build.int_op(op, a, b)

        # (either probe alone is a test that every pair of both satisfies)
        return Segment(both("max", self.lo, other.lo), both("min", self.hi, other.hi),
                       both("max", self.full_lo, other.full_lo), both("min", self.full_hi, other.full_hi),
                       self.block, self.stride, self.offset, build.logic("and", self.guard, other.guard),
                       self.probe or other.probe)

    def partial(self) -> "Segment":
        """The same keys, with no full interval."""
        return replace(self, full_lo=_ZERO, full_hi=_ZERO)


@dataclass(frozen=True)
class Topk:
    """A topk atom's arguments, decoded once (passes/dynamic.py decode_topk): what the
    kernels and the runtime read, never the atom."""

    atom: ir.Atom
    n: int
    block: int
    score: str
    causal: bool

    @property
    def minmax(self) -> bool:
        return self.score == "minmax"


@dataclass(frozen=True)
class TopkPart(Topk):
    """A branch's topk as its kernels walk it: the selected blocks add the pairs
    `mask` (C & ~static, passes/dynamic.py)."""

    mask: ir.Node  # the element mask of a selected block's pairs: C & ~static

    @property
    def selection(self) -> Topk:
        """The pattern-wide part (one selection tensor serves every branch)."""
        return Topk(self.atom, self.n, self.block, self.score, self.causal)


@dataclass(frozen=True)
class BranchPlan:
    cond: ir.Node  # over h, H, Hk: the heads of this branch (first match wins)
    mask: ir.Node  # the element mask
    segments: tuple[Segment, ...]  # ranges first, then strided
    query_segments: tuple[Segment, ...] = ()  # transposed: for a key tile, the queries that see it
    topk: TopkPart | None = None  # the branch's selected blocks (segments and mask are its static part)
    landmarks: int | None = None  # the landmark block size, if the branch sees landmarks
    # compensation(): the keys [lo, hi) whose mean is the one extra entry of the query at q
    # (expressions over q and the heads; no entry when lo >= hi)
    compensation: tuple[ir.Node, ir.Node] | None = None


@dataclass(frozen=True)
class KernelPlan:
    name: str
    branches: tuple[BranchPlan, ...]
    rate: int  # residue layout step (1: plain)
    wide: bool  # 64-bit index arithmetic in masks and bounds
    blocks: tuple[int, ...]  # block sizes of strided segments (the key tile must divide them)
    topk: Topk | None = None  # the pattern's topk (one selection tensor for all branches)
    landmarks: int | None = None  # the pattern's landmark block size
    compensation: bool = False  # some branch has compensation entries (prefix sums of K and V)
    # how many leading keys every query may see (the largest n of sink(n) and global(n)): the
    # backward's dK/dV kernel splits their tiles over several programs (a schedule only)
    long_keys: int = 0
    # the pattern as .attn text: a comment in the generated source (not part of the plan's identity)
    text: str = field(default="", compare=False, repr=False)

    @property
    def dynamic(self) -> bool:
        return self.topk is not None or self.landmarks is not None or self.compensation
