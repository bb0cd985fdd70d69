"""Running the generated kernels: allocation, launch grids, interpreter mode.

Tensors arrive as [B, H, L, D] (K/V with Hk heads). A packed variable-length
batch arrives as [1, H, T, D] views of the packed [T, H, D] tensors, with
`cu_q`/`cu_k` (int32 [S + 1]): the kernels then index sequences by the grid's
batch axis and read their rows from the cumulative starts.

Every entry point takes the pattern's KernelPlan (ir/plan.py), which the compile
pipeline built (runtime/ops.py plan_for); nothing here plans or optimizes."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..ir.plan import KernelPlan
from .cache import load_source
from .generate import kernel_source
from .interface import KERNELS, bind
from .tiles import table_config
from .tma import use_tma

LOG2E = 1.4426950408889634
# Keyed weakly by the plan (its pattern owns it): a pattern's kernels go with it
# (kernels never refer back to the plan, which would keep it alive).
_KERNELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # plan -> {(fixed, d, block_n): (module, names)}


def kernels_for(plan: KernelPlan, fixed_tiles: bool, head_dim: int, block_n: int | None):
    """(module, {kind: kernel name}) of a plan's kernels, generated once: a
    call costs a dict lookup, not code generation (milliseconds of host time)."""
    per_plan = _KERNELS.get(plan)
    if per_plan is None:
        per_plan = _KERNELS[plan] = {}
    key = (fixed_tiles, head_dim, block_n)
    hit = per_plan.get(key)
    if hit is None:
        src, names = kernel_source(plan, plan.text, fixed_tiles, head_dim, block_n)
        hit = per_plan[key] = (load_source(src, names["fwd"]), names)
    return hit


def interpreter_ready() -> bool:
    """True when Triton was imported with TRITON_INTERPRET=1 (kernels run on the CPU)."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.zeros, InterpretedFunction)


def _pow2(n: int) -> int:
    return max(16, 1 << (max(1, n) - 1).bit_length())


@dataclass(frozen=True)
class Varlen:
    """A packed batch: cumulative starts (int32 [S + 1]) and the longest sequences. Or, with
    `padded`, a padded batch [B, H, L, D]: cu_q / cu_k are int32 [B, 2], each entry's first
    row and length (max_q, max_k unused)."""

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    padded: bool = False


@dataclass(frozen=True)
class Positions:
    """Where a dense batch's rows sit in their sequence: query row i at position q0 + i, key
    row j at k0 + j, in a sequence of `lq` queries (positions [lk - lq, lk)) and `lk` keys
    (positions [0, lk)), which the rows may be a part of (context parallelism: a shard of
    queries over a piece of keys, both at global positions; then lq == lk, the sequence's
    length). lq and lk are the values of the symbols Lq and Lk in the plan's segments. The
    default of Lq queries over Lk keys aligns them bottom-right: `bottom_right(Lq, Lk)`."""

    q0: int
    k0: int
    lq: int
    lk: int

    @staticmethod
    def bottom_right(lq: int, lk: int) -> "Positions":
        return Positions(lk - lq, 0, lq, lk)

    def scalars(self) -> dict:
        """The kernels' arguments (kernels/interface.py)."""
        return dict(Q_POS0=self.q0, K_POS0=self.k0, SEQ_LQ=self.lq, SEQ_LK=self.lk)

    def check(self, lq: int, lk: int) -> None:
        """InputError unless `lq` query rows and `lk` key rows at these positions lie in the
        sequence, whose positions fit int32."""
        if not (0 <= self.lk - self.lq <= self.q0 and self.q0 + lq <= self.lk and 0 <= self.k0
                and self.k0 + lk <= self.lk < 2 ** 31):
            raise InputError(f"positions: {lq} query rows from position {self.q0} and {lk} key rows from "
                             f"{self.k0} do not lie in a sequence of {self.lq} queries (positions "
                             f"[{self.lk - self.lq}, {self.lk})) and {self.lk} keys")


def packed(varlen: "Varlen | None") -> bool:
    """Whether the tensors are a packed batch ([1, H, T, D] views, no batch stride)."""
    return varlen is not None and not varlen.padded


def padded(varlen: "Varlen | None") -> bool:
    """Whether the tensors are a padded batch ([B, H, L, D], per-entry first rows and lengths)."""
    return varlen is not None and varlen.padded


SHORT = 256  # sequences up to this long run on one fixed config (no autotuning)


def small_config(head_dim: int) -> tuple[int, int, int, int]:
    """The fixed tiles of short sequences and of the guard kernel."""
    return (64, 32, 4, 2) if head_dim <= 128 else (32, 32, 4, 2)


class _Launch:
    """What the kernels of one call share: the plan, the meta-parameters, the
    tiles (fixed per kernel kind, or autotuned) and the grid.

    `config`: None (autotune; (16, 16) in the interpreter), a tuple (BLOCK_M,
    BLOCK_N[, num_warps, num_stages]) for every kernel, or a dict from kernel
    kind ("fwd", "dq", "dkdv") to such a tuple (kinds left out autotune). `positions`: a dense
    batch's (Positions; None: bottom-right)."""

    def __init__(self, plan: KernelPlan, q, k, v, interpret, config, varlen: Varlen | None,
                 positions: Positions | None = None):
        if interpret and not interpreter_ready():
            raise InputError("backend='triton' on CPU tensors runs the kernels in Triton's interpreter, which must "
                             "be switched on before triton is imported: set TRITON_INTERPRET=1 in the environment")
        if q.dtype == torch.float64:
            raise NotImplementedError("float64 runs on the reference backend")
        self.plan, self.interpret, self.config = plan, interpret, config
        d, dv = q.shape[-1], v.shape[-1]
        self.head_dim = d
        self.device = q.device
        self.varlen = varlen
        self.h, self.hk = q.shape[1], k.shape[1]
        if varlen is None:
            self.batch, self.lq, self.lk = q.shape[0], q.shape[2], k.shape[2]
            self.cu = (q, q)  # unused pointers
        elif padded(varlen):
            self.batch, self.lq, self.lk = q.shape[0], q.shape[2], k.shape[2]
            self.cu = (varlen.cu_q, varlen.cu_k)
        else:
            self.batch, self.lq, self.lk = varlen.cu_q.numel() - 1, varlen.max_q, varlen.max_k
            self.cu = (varlen.cu_q, varlen.cu_k)
        if positions is not None and (varlen is not None or plan.dynamic):
            raise InputError(f"pattern {plan.name!r}: rows at given positions (context parallelism) take a "
                             "dense batch and a static pattern")
        if positions is not None:
            positions.check(self.lq, self.lk)
        # (a varlen batch's kernels align each entry themselves: these go unused)
        self.positions = positions or Positions.bottom_right(self.lq, self.lk)
        self.meta = dict(HEAD_DIM=d, HEAD_DIM_V=dv, BLOCK_D=_pow2(d), BLOCK_DV=_pow2(dv), RATE=plan.rate,
                         WIDE=plan.wide, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                         VARLEN=3 if padded(varlen) else 1 if packed(varlen) else 0, PAGE=0, DQ_ATOMIC=False,
                         SHARD=positions is not None,
                         GROUP=max(1, self.h // max(1, self.hk)))

    def fixed(self, kind: str):
        """The fixed tiles of kernel `kind`, or None to autotune. Short sequences
        take one small config: autotuning them would compile every config of the
        list for kernels that run for microseconds. A GPU of the tile table takes its
        tiles (kernels/tiles.py: the same kernel in every process)."""
        cfg = self.config.get(kind) if isinstance(self.config, dict) else self.config
        if cfg is None and self.interpret:
            return (16, 16)
        if cfg is None and max(self.lq, self.lk) <= SHORT:
            return small_config(self.head_dim)
        if cfg is None:
            cfg = table_config(kind, self.plan, self.head_dim, self.device)
        return cfg

    def strides(self, t: torch.Tensor) -> tuple[int, ...]:
        """A tensor's strides for the kernels; a packed batch has no batch stride
        (the batch axis picks a sequence, whose rows start at its cumulative start)."""
        return (0, *t.stride()[1:]) if packed(self.varlen) else t.stride()

    def run(self, kind: str, own_len: int, heads: int, tensors: dict, scalars: dict, strides: dict | None = None,
            extra=None, guard: bool = False) -> None:
        """Launch kernel `kind` over tiles of `own_len` positions (+1: with Lq != Lk
        a residue class may hold one more), `heads` per batch entry; `extra(BLOCK_M)`
        more programs on the first grid axis. The arguments go by name (interface.bind:
        `tensors`, `scalars`, the `strides` that are not the tensors' own). `guard`
        (the forward): the guard kernel follows, which computes the outputs again where
        a NaN or an infinity in V reached a tile (FLAG set) and otherwise returns at once."""
        fixed = self.fixed(kind)
        module, names = kernels_for(self.plan, fixed is not None, self.head_dim, fixed[1] if fixed else None)
        kernel = getattr(module, names[kind])
        takes = KERNELS[kind].scalar_names
        scalars = {**{n: x for n, x in self.positions.scalars().items() if n in takes}, **scalars}
        args = bind(kind, tensors, scalars, strides, self.strides)
        # Triton rejects unknown keywords: each kernel takes some of the meta-parameters
        meta = {k: v for k, v in self.meta.items() if k in KERNELS[kind].constexprs}
        if "TMA" in KERNELS[kind].constexprs:
            meta["TMA"] = use_tma(kind, tensors, self.meta, self.interpret)
        rate = self.plan.rate
        per_class = -(-own_len // rate) + 1

        def grid(meta):
            more = extra(meta["BLOCK_M"]) if extra else 0
            return (rate * -(-per_class // meta["BLOCK_M"]) + more, heads, self.batch)

        if fixed is not None:
            bm, bn, *rest = fixed
            launch = dict(zip(("num_warps", "num_stages"), rest))
            kernel[grid({"BLOCK_M": bm})](**args, **meta, BLOCK_M=bm, BLOCK_N=bn, **launch)
        else:
            kernel[grid](**args, **meta)
        if not guard or (self.interpret and tensors["FLAG"].item() == 0):  # (on the CPU: no launch to pay for)
            return
        # the guard kernel: fixed tiles (it runs only on non-finite inputs), a few programs
        bm, bn, *rest = fixed or small_config(self.head_dim)
        launch = dict(zip(("num_warps", "num_stages"), rest))
        g0, g1, g2 = grid({"BLOCK_M": bm})
        programs = min(g0 * g1 * g2, 4 if self.interpret else 2 * _sm_count(tensors["FLAG"].device))
        args = bind("guard", tensors, {**scalars, "GRID0": g0, "GRID1": g1, "GRID2": g2}, strides, self.strides)
        meta["TMA"] = False  # the guard kernel reads through masked pointers (kernels/tma.py)
        getattr(module, names["guard"])[(max(programs, 1),)](**args, **meta, BLOCK_M=bm, BLOCK_N=bn, **launch)


_SMS: dict = {}


def _sm_count(device) -> int:
    """The multiprocessors of a GPU (4 on the CPU)."""
    if device.type != "cuda":
        return 4
    n = _SMS.get(device.index)
    if n is None:
        n = _SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return n


def kernel_args(kernel) -> list[str]:
    """The argument names of a (possibly autotuned) Triton kernel."""
    while not hasattr(kernel, "arg_names"):
        kernel = kernel.fn
    return kernel.arg_names


def forward(plan: KernelPlan, q, k, v, scale: float, interpret: bool, config=None, varlen: Varlen | None = None,
            selection=None, landmarks=None, prefix=None, positions: Positions | None = None, out_dtype=None):
    """out (`out_dtype`, default q's; shaped like q with v's head dim), lse float32 ([B, H, Lq];
    varlen: [1, H, T] views of an [H, T] tensor). Dynamic patterns take the
    topk selection (int32 [B, H, R, n]) and the landmark entries (float32 K and
    V means, [B, Hk, NL, D]) of kernels/selection.py, and the prefix sums of K and V
    (float32 [B, Hk, L + 1, D]) of kernels/prefix.py for compensation entries.
    `positions`: where the rows of a dense batch sit (Positions; static patterns), default
    bottom-right; a row that sees none of the keys gets out 0 and lse -inf."""
    b, h, lq, _ = q.shape
    dv = v.shape[-1]
    pk = packed(varlen)
    out_dtype = out_dtype or q.dtype
    if padded(varlen):  # the padded rows, which no program writes: 0 and -inf
        out = torch.zeros((b, h, lq, dv), dtype=out_dtype, device=q.device)
        lse = torch.full((b, h, lq), float("-inf"), dtype=torch.float32, device=q.device)
    else:
        out = torch.empty((b, lq, h, dv) if pk else (b, h, lq, dv), dtype=out_dtype, device=q.device)
        out = out.transpose(1, 2) if pk else out
        lse = torch.empty((h, lq) if pk else (b, h, lq), dtype=torch.float32, device=q.device)
        lse = lse.unsqueeze(0) if pk else lse
    if out.numel() == 0 and lse.numel() == 0:
        return out, lse
    run = _Launch(plan, q, k, v, interpret, config, varlen, positions)
    if run.batch == 0:
        return out, lse
    tensors, strides = dynamic_tensors(selection, landmarks, prefix, forward=True)
    tensors.update(Q=q, K=k, V=v, O=out, LSE=lse, FLAG=torch.zeros(1, dtype=torch.int32, device=q.device),
                   CU_Q=run.cu[0], CU_K=run.cu[1], BT=None)
    run.run("fwd", run.lq, h, tensors, dict(H=h, Hk=run.hk, Lq=run.lq, Lk=run.lk, SPLIT=1, qk_scale=scale * LOG2E),
            strides, guard=True)
    return out, lse


def dynamic_tensors(selection, landmarks, prefix=None, forward: bool = False) -> tuple[dict, dict]:
    """The selection and landmark tensors of the forward and dQ kernels and, with `forward`,
    the prefix sums of K and V (None where unused); and their strides (their own, as
    allocated: never a packed batch's)."""
    if selection is not None:  # contiguous rows: the kernels read a row's width from its stride
        selection = selection.contiguous()
    kl, vl = landmarks if landmarks is not None else (None, None)
    tensors = dict(SEL=selection, KL=kl, VL=vl)
    if forward:
        tensors.update(zip(("PK", "PV"), prefix if prefix is not None else (None, None)))
    return tensors, {name: t.stride() for name, t in tensors.items() if t is not None}


def fused_backward(plan: KernelPlan, varlen: Varlen | None, deterministic: bool) -> bool:
    """Whether the backward fuses dQ into the dK/dV kernel (atomic float32 adds, so not bitwise
    repeatable): asked for with deterministic=False, for static patterns on dense batches."""
    return not deterministic and plan.topk is None and plan.landmarks is None and varlen is None


def backward(plan: KernelPlan, q, k, v, out, lse, dout, scale: float, interpret: bool, config=None,
             varlen: Varlen | None = None, dlse=None, kinds=("dq", "dkdv"), selection=None,
             deterministic: bool = True, positions: Positions | None = None, grad_dtype=None):
    """(dq, dk, dv), each shaped like q, k, v, in `grad_dtype` (default: their own dtypes).
    `dlse`: the gradient of the LSE output, if it was used. Deterministic (the default): no
    atomics, every gradient element is written by one program, so the result is bitwise
    repeatable. With deterministic=False a static pattern's dQ comes from the dK/dV kernel
    instead (fused_backward). `kinds` launches only some of the kernels (a benchmark timing
    them one by one; the fused backward has no dq kernel). `positions`: as in `forward`; out
    and lse may then be those of more keys than k and v hold (a softmax over several key
    pieces): each piece's backward takes the whole softmax's out and lse and gives the
    piece's dk, dv and its share of dq."""
    if plan.compensation:
        raise InputError(f"pattern {plan.name!r}: the Triton kernels have no backward for compensation() entries "
                         "(RazorAttention is training-free); use backend='reference' for gradients")
    # a padded batch's padded rows get no program: their gradients are zero from the start
    fill = torch.zeros_like if padded(varlen) else torch.empty_like

    def alloc(t):
        return fill(t, dtype=grad_dtype or t.dtype)

    grads = [alloc(t) for t in (q, k, v)]
    if q.numel() == 0 or k.numel() == 0:
        return tuple(g.zero_() for g in grads)
    # a gradient shares its input's strides (the kernels take one set); an input
    # whose strides empty_like cannot reproduce (overlapping, e.g. expanded) is copied
    q, k, v = (t if g.stride() == t.stride() else t.contiguous() for t, g in zip((q, k, v), grads))
    dq, dk, dv = (g if g.stride() == t.stride() else alloc(t) for t, g in zip((q, k, v), grads))
    run = _Launch(plan, q, k, v, interpret, config, varlen, positions)
    if run.batch == 0:
        return dq, dk, dv
    if plan.topk is not None and selection is None:
        raise InputError(f"pattern {plan.name!r}: the backward of a topk pattern needs the forward's selection")
    sel, landmarks = (None if selection is None else selection.contiguous()), None
    if plan.landmarks is not None:  # recomputed (one pass over K and V) rather than saved
        from .selection import packed_views, prefill_inputs

        if packed(varlen):
            qx, kx, vx, rows, lengths = packed_views(q, k, v, *run.cu, varlen.max_q, varlen.max_k)
            landmarks = prefill_inputs(plan, qx, kx, vx, selection, rows, lengths)[1]
        else:
            landmarks = prefill_inputs(plan, q, k, v, selection, run.cu if padded(varlen) else None)[1]
    fused = fused_backward(plan, varlen, deterministic)
    with_dq = "dq" in kinds and not fused
    # delta = rowsum(dO * O) - dLSE: the dQ kernel computes it for its rows on its way, else a pass of its own
    # (a padded batch's padding rows get no dQ program: zeros there, as their gradients). The kernels
    # read DELTA with LSE's strides: lse is made dense (a slice of a longer one is not), so that they fit
    lse = lse.contiguous()
    delta = (fill(lse) if with_dq else backward_delta(out, dout, lse, dlse))
    common = dict(Q=q, K=k, V=v, DO=dout, LSE=lse, DELTA=delta, CU_Q=run.cu[0], CU_K=run.cu[1])
    sizes = dict(H=run.h, Hk=run.hk, Lq=run.lq, Lk=run.lk, qk_scale=scale * LOG2E, sm_scale=scale)
    dqa = None
    if fused:  # dQ accumulates in float32 in the dK/dV kernel
        dqa = torch.zeros((run.batch, run.h, run.lq, run.meta["BLOCK_D"]), device=q.device, dtype=torch.float32)
        run.meta["DQ_ATOMIC"] = True
    elif with_dq:
        tensors, strides = dynamic_tensors(sel, landmarks)
        run.meta["HAS_DLSE"] = dlse is not None
        run.run("dq", run.lq, run.h, {**common, "DQ": dq, "O": out, "DLSE": dlse, **tensors}, sizes, strides)
    if "dkdv" in kinds:
        inv, ioff = inverse_selection(sel, -(-run.lk // plan.topk.block)) if sel is not None else (None, None)
        dkl, dvl, nl = _landmark_grads(run, plan, q, landmarks, dout, lse, delta, scale)
        long_keys, parts = split_plan(run)
        wsk = wsv = None  # no split: unused
        if parts > 1:
            shape = (parts, run.batch, run.hk, long_keys)
            wsk = torch.empty((*shape, run.meta["BLOCK_D"]), device=q.device, dtype=torch.float32)
            wsv = torch.empty((*shape, run.meta["BLOCK_DV"]), device=q.device, dtype=torch.float32)
        strides = {} if sel is None else {"INV": inv.stride()[:2], "IOFF": ioff.stride()[:2]}
        run.run("dkdv", run.lk, run.hk,
                {**common, "DK": dk, "DV": dv, "WSK": wsk, "WSV": wsv, "INV": inv, "IOFF": ioff, "DKL": dkl,
                 "DVL": dvl, "DQA": dqa},
                {**sizes, "LONG_KEYS": long_keys, "SPLIT": parts, "SEL_ROWS": sel.shape[2] if sel is not None else 1,
                 "NL": nl}, strides, extra=lambda bm: -(-long_keys // bm) * (parts - 1))
        if parts > 1:
            from .aux_kernels import split_sum_kernel

            for ws, g, d, s in ((wsk, dk, q.shape[-1], scale), (wsv, dv, v.shape[-1], 1.0)):
                split_sum_kernel[(-(-long_keys // 64), run.hk, run.batch)](
                    ws, g, run.cu[1], *run.strides(g), run.lk, long_keys, parts, s, HEAD_DIM=d,
                    BLOCK_D=ws.shape[-1], VARLEN=run.varlen is not None, BLOCK=64)
    if fused:
        dq.copy_(dqa[..., :q.shape[-1]].mul_(scale))
    return dq, dk, dv


def inverse_selection(sel: torch.Tensor, blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The topk selection (int32 [B, H, R, n], rows ascending, -1 = no block) inverted for the dK/dV
    kernel: keys (int64 [B, H, R * n], ascending) j * R + r for every row r that holds block j once,
    then blocks * R for the empty slots; and offsets (int32 [B, H, blocks + 1]): block j's rows are
    keys [offsets[j], offsets[j + 1]). Sort and search on the device: no host sync, fixed sizes."""
    b, h, r, n = sel.shape
    s = sel.long()
    repeat = torch.zeros_like(s, dtype=torch.bool)
    repeat[..., 1:] = s[..., 1:] == s[..., :-1]  # a repeated id (rows ascending) counts once
    row = torch.arange(r, device=sel.device).view(1, 1, r, 1)
    keys = torch.where((s >= 0) & (s < blocks) & ~repeat, s * r + row, blocks * r)
    keys = keys.reshape(b, h, r * n).sort(dim=-1).values
    bounds = (torch.arange(blocks + 1, device=sel.device) * r).expand(b, h, blocks + 1).contiguous()
    return keys, torch.searchsorted(keys, bounds).to(torch.int32)


# The landmark backward has few entry tiles (L / block / 64 per KV head): it splits each
# tile's queries into parts until there are about LANDMARK_PROGRAMS programs, each part
# at least LANDMARK_PART_QUERIES queries long.
LANDMARK_PROGRAMS = 512
LANDMARK_PART_QUERIES = 512


def _landmark_grads(run: "_Launch", plan: KernelPlan, q, landmarks, dout, lse, delta, scale):
    """(dKL, dVL, NL): the unscaled gradients of the landmark entries (float32 [B, Hk, NL, D/Dv],
    the dlm kernel), which the dK/dV kernel spreads onto the keys; unused (None) without landmarks."""
    if landmarks is None:
        return None, None, 0
    kl, vl = landmarks
    b, hk, nl = kl.shape[:3]
    tiles = b * hk * -(-nl // 64)
    parts = max(1, min(32, -(-LANDMARK_PROGRAMS // max(tiles, 1)), run.lq // LANDMARK_PART_QUERIES))
    dkl = torch.empty((parts, *kl.shape), device=q.device, dtype=torch.float32)
    dvl = torch.empty((parts, *vl.shape), device=q.device, dtype=torch.float32)
    if nl > 0:
        run.run("dlm", nl, run.hk, dict(Q=q, KL=kl, VL=vl, DO=dout, LSE=lse, DELTA=delta, DKL=dkl, DVL=dvl,
                                        CU_Q=run.cu[0], CU_K=run.cu[1]),
                dict(H=run.h, Hk=run.hk, Lq=run.lq, Lk=run.lk, NL=nl, SPLIT=parts, qk_scale=scale * LOG2E),
                {"KL": kl.stride(), "VL": vl.stride()},
                extra=lambda bm: -(-nl // bm) * parts - -(-(nl + 1) // bm))  # parts programs per entry tile
    # the parts' partial sums, added in order (deterministic)
    return (dkl[0], dvl[0], nl) if parts == 1 else (dkl.sum(0), dvl.sum(0), nl)


# A key tile seen by more than about this many queries (times the query heads of
# its KV head) is split over several programs of the dK/dV kernel.
SPLIT_QUERIES = 2048


def long_keys(plan: KernelPlan) -> int:
    """How many leading keys every query may see (the plan's long_keys: sink(n) and
    global(n)). Their tiles are the dK/dV kernel's long ones; splitting any tile is
    correct, so this is only a schedule."""
    return plan.long_keys


def split_plan(run: _Launch) -> tuple[int, int]:
    """(long keys, parts): the dK/dV kernel splits the tiles of key rows [0, long keys)
    into `parts` programs each (1: no split). Long keys are rounded up to a multiple
    of 128, so that they are whole tiles for every BLOCK_M. Residue layouts (RATE > 1)
    are not split, nor keys that do not start at position 0 (they hold no sink)."""
    n = -(-min(long_keys(run.plan), run.lk) // 128) * 128
    work = run.lq * (run.h // run.hk)
    # (a padded batch's keys start anywhere in their entry: its tiles are not split)
    if n == 0 or run.plan.rate != 1 or work <= SPLIT_QUERIES or padded(run.varlen) or run.positions.k0 != 0:
        return 0, 1
    parts = min(64, -(-work // SPLIT_QUERIES))
    # workspace cap: about 256 MiB of float32 partial sums
    per_part = run.batch * run.hk * n * (run.meta["BLOCK_D"] + run.meta["BLOCK_DV"]) * 4
    parts = max(1, min(parts, (256 << 20) // per_part))
    return (n, parts) if parts > 1 else (0, 1)


def backward_delta(out, dout, lse, dlse=None):
    """delta_i = sum_j P_ij dP_ij = dO_i . O_i (minus dLSE_i: d lse_i / d s_ij = P_ij),
    float32 in LSE's layout; one fused pass over O and dO."""
    from .aux_kernels import delta_kernel

    delta = torch.empty_like(lse)
    b, h, rows, dv = out.shape
    has = dlse is not None
    dl = dlse if has else lse
    block = 64
    delta_kernel[(-(-rows // block), h, b)](
        out, dout, dl, delta, *out.stride(), *dout.stride(), *dl.stride(), *delta.stride(), rows,
        HEAD_DIM_V=dv, BLOCK_DV=_pow2(dv), HAS_DLSE=has, BLOCK=block)
    return delta
