"""KernelPlan -> Triton source: the Jinja2 templates in codegen/ (one per
kernel, codegen/kernels.py.jinja includes them in order) with the
plan-specific parts (element masks, per-branch segment loops) generated here.

One module per plan holds the kernels: the forward and its guard, the
backward's dQ kernel (the forward's traversal: per query tile, the key
segments), its dK/dV kernel (the transposed traversal: per key tile, the query
segments) and, with landmark entries, their backward (dlm). The kernels'
signatures come from their descriptions in kernels/interface.py."""
from __future__ import annotations

import functools
import hashlib

import jinja2

from ..ir import nodes as ir
from ..ir.printer import to_text
from ..ir.plan import KernelPlan, Segment
from ..resources import data_dir
from .emit import Emitter
from .interface import KERNELS

# (BLOCK_M, BLOCK_N, num_warps, num_stages). Measured on an H100 (benchmarks/tile_sweep.py):
# dense-ish patterns like large tiles, windows and sparse blocks like 64-row tiles.
GPU_CONFIGS = [
    (128, 128, 8, 2), (128, 64, 8, 3), (64, 64, 4, 3), (64, 64, 4, 2), (64, 32, 4, 2), (128, 32, 4, 3),
]
# Backward: (own tile, iterated tile, warps, stages); the dK/dV kernel's own tile is keys.
# Few configs: each costs a compile of the kernel on first use. The best three of a sweep
# on an H100 at 16K, D=128 (benchmarks/tile_sweep.py): 128 keys with 4 warps spill the
# dK/dV accumulators (3x slower), so dK/dV owns 64 keys or uses 8 warps.
DQ_CONFIGS = [(128, 64, 8, 3), (64, 64, 4, 2), (64, 32, 4, 3)]
DKDV_CONFIGS = [(64, 32, 4, 3), (64, 64, 4, 2), (128, 64, 8, 2)]
CUT_RANGES = 2  # earlier plain ranges cut out of a segment in closed form (pieces: 2 ** CUT_RANGES)
TUNE_KEY = '["HEAD_DIM", "HEAD_DIM_V", "RATE", "H", "Hk", "VARLEN"]'


def keep_config(plan: KernelPlan, block_n: int, head_dim: int) -> bool:
    """A key tile must lie inside one block of every strided segment; big heads need small tiles."""
    if any(b % block_n for b in plan.blocks):
        return False
    return head_dim <= 128 or block_n <= 64


@functools.cache
def _templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(data_dir("codegen"))),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                              lstrip_blocks=True, autoescape=False)


def _indent(lines: list[str], n: int) -> str:
    return "\n".join((" " * n + line) if line else "" for line in lines)


def selected_mask_id(plan: KernelPlan, i: int) -> int:
    """The mask id of branch i's selected-block pairs (its landmarks: this + 1)."""
    return len(plan.branches) + 2 * i


def _text(node: ir.Node, limit: int = 300) -> str:
    """The node as .attn text for a comment, or a placeholder when the text would be long
    (printing a DAG unfolds it: its tree size is counted first, once per node)."""
    size: dict = {}
    for n in ir.post_order(node):
        size[n] = 1 + sum(size[c] for c in n.children())
        if size[n] > limit:
            return "(an expression too long to print)"
    text = to_text(node)
    return text if len(text) <= limit else text[:limit] + " ..."


def _mask_functions(plan: KernelPlan) -> str:
    masks = {}
    for i, br in enumerate(plan.branches):
        masks[i] = (_text(br.mask), br.mask)
        if br.topk is not None:
            masks[selected_mask_id(plan, i)] = (f"selected blocks: {_text(br.topk.mask)}", br.topk.mask)
        if br.landmarks is not None:
            masks[selected_mask_id(plan, i) + 1] = (
                f"landmark entries (k_pos: the entry): k < q // {br.landmarks}",
                f"(k_pos < _fdiv(q_pos, {br.landmarks}))")
    out = []
    for i, (text, mask) in masks.items():
        em = Emitter("m", plan.wide, "    ")
        expr = mask if isinstance(mask, str) else em.mask(mask)
        out += ["", "@jit", f"def _mask_{i}(q_pos, k_pos, h, hk, H, Hk):",
                f"    # {text}", *em.lines, f"    return {expr}", ""]
    out += ["", "@jit", "def _visible(MASK_ID: tl.constexpr, q_pos, k_pos, h, hk, H, Hk):"]
    for n, i in enumerate(masks):
        out.append(f"    {'if' if n == 0 else 'elif'} MASK_ID == {i}:")
        out.append(f"        return _mask_{i}(q_pos, k_pos, h, hk, H, Hk)")
    return "\n".join(out) + "\n"


def _describe(j: int, seg: Segment) -> str:
    desc = f"keys [{_text(seg.lo, 80)}, {_text(seg.hi, 80)})"
    if seg.strided:
        desc += f" in blocks j with (j + {_text(seg.offset, 80)}) % {_text(seg.stride, 80)} == 0"
    if seg.guard != ir.Bool(True):
        desc += f" if {_text(seg.guard, 80)}"
    if seg.has_full:
        desc += f"; no mask in [{_text(seg.full_lo, 80)}, {_text(seg.full_hi, 80)})"
    if seg.probe:
        desc += "; a tile is walked where a block probe holds"
    return f"# segment {j}: {desc}"


class _Piece:
    """A run of key tiles in the flattened loop: tile t of the piece (0 <= t < n)
    starts at key index u0(t), needs the mask unless f1 <= t < f2, and may read
    keys [pa, pb) only."""

    def __init__(self, name: str, strided_block: int | None, dead: str = "", probe=()):
        self.name, self.block, self.dead, self.probe = name, strided_block, dead, probe

    def u0(self, t: str) -> str:
        n = self.name
        if self.block is None:
            return f"pa_{n} + ({t}) * BLOCK_N"
        b = self.block
        return f"(first_{n} + s_{n} * (({t}) // ({b} // BLOCK_N))) * {b} + (({t}) % ({b} // BLOCK_N)) * BLOCK_N"


def _segment_pieces(j: int, seg: Segment, segs, plan: KernelPlan, walk: bool) -> tuple[list[str], list[_Piece]]:
    """Setup code of segment j of `segs`, and its pieces: the segment minus the
    tiles of earlier plain ranges (cut out in closed form)."""
    # bounds in 64 bits (pattern arguments may exceed int32), clamped to the positions present
    # (pos_lo, pos_hi: the kernel's iterated rows): int32 again
    em = Emitter(f"b{j}_", wide=True)
    lo, hi = em.int(seg.lo), em.int(seg.hi)
    guard = em.cond(seg.guard) if seg.guard != ir.Bool(True) else None
    full = seg.has_full and (strided_walk(seg, plan, walk) or not seg.strided)
    full_lo, full_hi = (em.int(seg.full_lo), em.int(seg.full_hi)) if full else (None, None)
    stride, offset = (em.int(seg.stride), em.int(seg.offset)) if seg.strided else (None, None)
    lines = [_describe(j, seg), *em.lines, f"lo = _clamp({lo}, pos_lo, pos_hi)", f"hi = _clamp({hi}, pos_lo, pos_hi)"]
    if guard is not None:
        lines.append(f"hi = tl.where({guard}, hi, lo)")
    lines += [f"ua_{j} = _floor_to(_first_u(lo, c, RATE), BLOCK_N)",
              f"ub_{j} = tl.where(hi > lo, _floor_to(_first_u(hi, c, RATE) + BLOCK_N - 1, BLOCK_N), ua_{j})"]
    strided = strided_walk(seg, plan, walk)
    # (a strided segment walked as a plain range visits keys outside its blocks: all need the mask)
    if full:
        lines += [f"fa = _floor_to(_first_u(_clamp({full_lo}, pos_lo, pos_hi), c, RATE) + BLOCK_N - 1, BLOCK_N)",
                  f"fb = _floor_to(tl.minimum(_first_u(_clamp({full_hi}, pos_lo, pos_hi), c, RATE), num_u), "
                  "BLOCK_N)"]
    # The tiles of earlier segments are not visited again: the first CUT_RANGES plain ranges
    # are cut out in closed form (each cut doubles the pieces), the others make a tile dead.
    spans = [(f"ua_{j}", f"ub_{j}")]
    deads = []
    plain = [m for m, other in enumerate(segs[:j]) if not strided_walk(other, plan, walk)]
    for m in plain[:CUT_RANGES]:
        cut = []
        for a, b in spans:
            cut += [(a, f"tl.minimum({b}, ua_{m})"), (f"tl.maximum({a}, ub_{m})", b)]
        spans = cut
    deads += [f"((u0 >= ua_{m}) & (u0 < ub_{m}))" for m in plain[CUT_RANGES:]]
    deads += [f"((u0 >= ua_{m}) & (u0 < ub_{m}) & (_fmod(u0 // {o.block.value} + off_{m}, s_{m}) == 0))"
              for m, o in enumerate(segs[:j]) if strided_walk(o, plan, walk)]
    dead = " | ".join(deads)
    if strided:
        # the offset only matters modulo the stride; both fit int32 unless the stride does not
        zero = "tl.full([], 0, tl.int64)"  # (constants as 64-bit tensors)
        lines += [f"s_{j}, off_{j} = _narrow({zero} + {stride}, {zero} + {offset})"]
    pieces = []
    for n, (a, b) in enumerate(spans):
        name = f"{j}_{n}"
        lines += [f"pa_{name} = {a}", f"pb_{name} = tl.maximum({b}, pa_{name})"]
        if not strided:
            lines.append(f"n_{name} = (pb_{name} - pa_{name}) // BLOCK_N")
            if full:
                lines += [f"f1_{name} = (tl.minimum(tl.maximum(fa, pa_{name}), pb_{name}) - pa_{name}) // BLOCK_N",
                          f"f2_{name} = tl.maximum((tl.minimum(fb, pb_{name}) - pa_{name}) // BLOCK_N, f1_{name})"]
            pieces.append(_Piece(name, None, dead, seg.probe))
            continue
        blk = seg.block.value
        lines += [f"s_{name} = s_{j}",
                  f"jlo = pa_{name} // {blk}",
                  f"jhi = (pb_{name} + {blk - 1}) // {blk}",
                  f"first_{name} = jlo + _fmod(-(jlo + off_{j}), s_{j})",
                  f"n_{name} = tl.maximum(jhi - first_{name} + s_{j} - 1, 0) // s_{j} * ({blk} // BLOCK_N)"]
        if full:  # lattice blocks that lie inside both the piece and the full interval
            lines += [f"j1 = tl.maximum((tl.maximum(fa, pa_{name}) + {blk - 1}) // {blk}, first_{name})",
                      f"j2 = tl.minimum(fb, pb_{name}) // {blk}",
                      f"f1_{name} = (j1 - first_{name} + s_{j} - 1) // s_{j} * ({blk} // BLOCK_N)",
                      f"f2_{name} = tl.maximum((j2 - first_{name} + s_{j} - 1) // s_{j} * ({blk} // BLOCK_N), "
                      f"f1_{name})"]
        pieces.append(_Piece(name, blk, dead, seg.probe))
    return lines, pieces


def strided_walk(seg: Segment, plan: KernelPlan, walk: bool) -> bool:
    """Walk a strided segment block by block (else as a plain range, every tile masked).
    `walk` says the key tile divides every constant strided block."""
    return walk and seg.strided and plan.rate == 1 and isinstance(seg.block, ir.Const)


class Traversal:
    """How a kernel walks a branch: which segments, which step function it
    calls per tile (with the branch's mask id as {i})."""

    def __init__(self, transposed: bool, call: str, split: str = "", selected: str = "", landmark: str = "",
                 full_call: str = "", compensation: str = ""):
        self.transposed, self.call = transposed, call
        # the step of a full tile (no mask, no bounds): full tiles get a loop of their own
        self.full_call = full_call
        # "parts": the program walks share `part` of SPLIT of the tile's loop (the forward when
        # decoding); "long": only split key tiles do (part >= 0, the dK/dV kernel)
        self.split = split
        self.selected, self.landmark = selected, landmark  # the calls for dynamic parts (forward)
        self.compensation = compensation  # (forward: the backward of compensation entries raises)

    def segments(self, br):
        return br.query_segments if self.transposed else br.segments


FORWARD = Traversal(False, (
    "acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, k_base, v_base, bt_base, offs_d, offs_dv, "
    "stride_kn, stride_kd, stride_kp, stride_vn, stride_vd, stride_vp, u0, c, koff, lo_v, hi_v, masked, "
    "h, hk, H, Hk, qk_scale, RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, WIDE, PAGE, GUARD, "
    "k_desc, v_desc, TMA)"), "parts", (
    "acc, l_i, m_i = _attend_rows(acc, l_i, m_i, q, q_pos, k_base, v_base, bt_base, offs_d, offs_dv, "
    "stride_kn, stride_kd, stride_kp, stride_vn, stride_vd, stride_vp, u0, lo_v, hi_v, q_lo, q_lo + {block}, "
    "h, hk, H, Hk, qk_scale, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, PAGE, GUARD)"), (
    "acc, l_i, m_i = _attend(acc, l_i, m_i, q, q_pos, kl_base, vl_base, bt_base, offs_d, offs_dv, "
    "stride_kln, stride_kld, 0, stride_vln, stride_vld, 0, u0, 0, 0, 0, nl, u0 + BLOCK_N > nl_all, "
    "h, hk, H, Hk, qk_scale, 1, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, WIDE, 0, GUARD, "
    "kl_base, vl_base, False)"), (
    "acc, l_i, m_i = _attend_full(acc, l_i, m_i, q, k_base, v_base, bt_base, offs_d, offs_dv, stride_kn, stride_kd, "
    "stride_kp, stride_vn, stride_vd, stride_vp, u0, c, koff, qk_scale, RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, BLOCK_D, "
    "BLOCK_DV, DOT_PRECISION, PAGE, GUARD, k_desc, v_desc, TMA)"), (
    "acc, l_i, m_i = _attend_mean(acc, l_i, m_i, q, row_ok, c_lo, c_hi, pk_base, pv_base, offs_d, "
    "offs_dv, stride_pkn, stride_pkd, stride_pvn, stride_pvd, qk_scale, HEAD_DIM, HEAD_DIM_V)"))
DQ = Traversal(False, (
    "dq = _dq_step(dq, q, do, lse2, delta, q_pos, k_base, v_base, offs_d, offs_dv, "
    "stride_kn, stride_kd, stride_vn, stride_vd, u0, c, koff, lo_v, hi_v, masked, h, hk, H, Hk, qk_scale, "
    "RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, WIDE, k_desc, v_desc, TMA)"), "", (
    "dq = _dq_rows(dq, q, do, lse2, delta, q_pos, k_base, v_base, offs_d, offs_dv, "
    "stride_kn, stride_kd, stride_vn, stride_vd, u0, lo_v, hi_v, q_lo, q_lo + {block}, h, hk, H, Hk, qk_scale, "
    "BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION)"), (
    "dq = _dq_step(dq, q, do, lse2, delta, q_pos, kl_base, vl_base, offs_d, offs_dv, "
    "stride_kln, stride_kld, stride_vln, stride_vld, u0, 0, 0, 0, nl, u0 + BLOCK_N > nl_all, h, hk, H, Hk, "
    "qk_scale, 1, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, WIDE, kl_base, vl_base, False)"), (
    "dq = _dq_full(dq, q, do, lse2, delta, k_base, v_base, offs_d, offs_dv, stride_kn, stride_kd, stride_vn, "
    "stride_vd, u0, c, koff, qk_scale, RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, BLOCK_D, BLOCK_DV, DOT_PRECISION, "
    "k_desc, "
    "v_desc, TMA)"))
_KV_ARGS = ("q_base, do_base, lse_base, delta_base, offs_d, offs_dv, "
            "stride_qm, stride_qd, stride_dom, stride_dod, stride_lm, off")
DKDV = Traversal(True, (
    f"dk, dv = _kv_step(dk, dv, k, v, k_pos, key_ok, {_KV_ARGS}, u0, c, lo_v, hi_v, masked, "
    "h, hk, H, Hk, qk_scale, RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {i}, DOT_PRECISION, WIDE, q_desc, do_desc, TMA, "
    "dqa, DQ_ATOMIC)"),
    "long", full_call=(
    f"dk, dv = _kv_full(dk, dv, k, v, {_KV_ARGS}, u0, c, qk_scale, RATE, BLOCK_N, HEAD_DIM, HEAD_DIM_V, "
    "BLOCK_D, BLOCK_DV, DOT_PRECISION, q_desc, do_desc, TMA, dqa, DQ_ATOMIC)"))


def _branch_body(i: int, br, plan: KernelPlan, walk: bool, how: Traversal) -> list[str]:
    """All segments of a branch as one loop over a flattened tile index; then, in the
    forward, the branch's selected blocks and landmark entries, each a loop that
    continues the same index (a split program takes a share of the whole range),
    and its compensation entries."""
    tail = _compensation(br, how.compensation) if how.compensation and br.compensation is not None else []
    lines: list[str] = []
    pieces: list[_Piece] = []
    full = {}
    segs = how.segments(br)
    walk = walk and not how.transposed
    for j, seg in enumerate(segs):
        setup, ps = _segment_pieces(j, seg, segs, plan, walk)
        lines += setup
        pieces += ps
        for p in ps:
            full[p.name] = seg.has_full and (strided_walk(seg, plan, walk) or not seg.strided)
    dynamic = how.selected and (br.topk is not None or br.landmarks is not None)
    inverse = how.transposed and br.topk is not None
    if not pieces and not dynamic:
        return tail or (_dkdv_selected(i, br, plan) if inverse else ["pass  # no key is visible to these heads"])
    # Full tiles (every pair visible) take a loop of their own, with no mask and no bounds, where
    # the traversal has such a step; a piece with dead tiles keeps them all in the masked loop.
    own = {p.name: bool(how.full_call) and full[p.name] and not p.dead for p in pieces}
    if any(own.values()):
        lines.append("# one loop over the partial tiles of all pieces, in order, then one over their full tiles")
    else:
        lines.append("# one loop over the tiles of all pieces, in order")
    lines.append("c_0 = 0")
    for n, p in enumerate(pieces):
        count = f"n_{p.name} - (f2_{p.name} - f1_{p.name})" if own[p.name] else f"n_{p.name}"
        lines.append(f"c_{n + 1} = c_{n} + {count}")
    total = f"c_{len(pieces)}"
    owners = [(n, p) for n, p in enumerate(pieces) if own[p.name]]
    if owners:
        lines.append(f"d_0 = {total}")
        for m, (n, p) in enumerate(owners):
            lines.append(f"d_{m + 1} = d_{m} + f2_{p.name} - f1_{p.name}")
        total = f"d_{len(owners)}"
    if dynamic:
        extra, loops, total = _dynamic_parts(i, br, plan, how, total)
        lines += extra
    if how.split == "long":
        lines += [f"t_a = tl.where(part >= 0, part * {total} // SPLIT, 0)",
                  f"t_b = tl.where(part >= 0, (part + 1) * {total} // SPLIT, {total})"]
    elif how.split == "parts":
        lines += [f"t_a = part * {total} // SPLIT", f"t_b = (part + 1) * {total} // SPLIT"]
    else:
        lines += ["t_a = 0", f"t_b = {total}"]
    if pieces:
        stop = f"tl.minimum(t_b, c_{len(pieces)})" if dynamic or owners else "t_b"
        lines.append(f"for t in range(t_a, {stop}):")
        lines += ["    " + b for b in _static_loop_body(i, pieces, full, own, how)]
    if owners:
        stop = f"tl.minimum(t_b, d_{len(owners)})" if dynamic else "t_b"
        lines.append(f"for t in range(tl.maximum(t_a, d_0), {stop}):")
        lines += ["    " + b for b in _full_loop_body(owners, how)]
    if dynamic:
        lines += loops
    if inverse:
        lines += _dkdv_selected(i, br, plan)
    return lines + tail


def _compensation(br, call: str) -> list[str]:
    """A branch's compensation entries: each row's hidden keys [c_lo, c_hi) (its own q_pos), then the call."""
    em = Emitter("cm_", wide=True)
    lo, hi = em.int(br.compensation[0]), em.int(br.compensation[1])
    return [f"# compensation(): each row's entry, the mean key and value of its hidden keys "
            f"[{_text(br.compensation[0], 80)}, {_text(br.compensation[1], 80)})",
            *em.lines, f"c_lo = _clamp({lo}, 0, Lk)",
            f"c_hi = tl.where(part == 0, _clamp({hi}, 0, Lk), 0)  # (a split program adds it in its part 0 only)",
            call]


def _static_loop_body(i: int, pieces: list[_Piece], full: dict, own: dict, how: Traversal) -> list[str]:
    """The masked loop's body. A piece whose full tiles have a loop of their own (`own`) contributes
    its partial tiles here: index tt of them is tile tt below the full run f1 .. f2, else past it."""
    body = []
    # "True": every tile of the piece is masked (a constant where the traversal has a full step,
    # so that the mask is no branch in the loop)
    always = "True" if how.full_call else "t >= 0"
    masks = {}
    for n, p in enumerate(pieces):
        tt = f"t - c_{n}"
        masks[n] = f"(({tt}) < f1_{p.name}) | (({tt}) >= f2_{p.name})" if full[p.name] and not own[p.name] \
            else always
    one_mask = len(set(masks.values())) == 1 and always in masks.values()
    for n in reversed(range(len(pieces))):  # the last piece first, earlier ones override by t < c_{n+1}
        p = pieces[n]
        tt = f"t - c_{n}"
        if own[p.name]:
            tt = f"tl.where({tt} < f1_{p.name}, {tt}, {tt} + f2_{p.name} - f1_{p.name})"
        vals = [p.u0(tt), masks[n], f"pa_{p.name}", f"pb_{p.name}"]
        if n == len(pieces) - 1:
            body += [f"u0 = {vals[0]}", f"masked = {vals[1]}", f"lo_v = {vals[2]}", f"hi_v = {vals[3]}"]
        else:
            sel = f"t < c_{n + 1}"
            body += [f"u0 = tl.where({sel}, {vals[0]}, u0)",
                     *([] if one_mask else [f"masked = tl.where({sel}, {vals[1]}, masked)"]),
                     f"lo_v = tl.where({sel}, {vals[2]}, lo_v)", f"hi_v = tl.where({sel}, {vals[3]}, hi_v)"]
    if any(p.dead for p in pieces):
        deads = [f"({p.dead}) & (t >= c_{n}) & (t < c_{n + 1})" for n, p in enumerate(pieces) if p.dead]
        body += [f"dead = {' | '.join(deads)}", "lo_v = tl.where(dead, hi_v, lo_v)"]
        if not (one_mask and always == "True"):
            body.append("masked = masked | dead")
    # (the first tile may start before the first row: tiles are aligned in positions)
    body += ["hi_v = tl.minimum(hi_v, num_u)", "lo_v = tl.maximum(lo_v, u_lo)"]
    probed = [n for n, p in enumerate(pieces) if p.probe]
    if not probed:
        body.append(how.call.format(i=i))
        return body
    # the probed pieces come last (passes/plan.py): their tiles are walked where a probe holds
    body += _probe_lines(pieces[probed[0]].probe, f"t < c_{probed[0]}", how.transposed)
    body += ["if hit:", "    " + how.call.format(i=i)]
    return body


def _probe_lines(probes, walked: str, transposed: bool) -> list[str]:
    """hit: whether the tile is walked: `walked` (a tile of an unprobed piece), or some probe
    holds at some (query block, key block) of the tile box (the query tile's [q0, q1) and the
    key tile [u0, u0 + BLOCK_N); transposed: the key tile's [k0, k1) and the query tile)."""
    q_box, k_box = (("u0", "tl.minimum(u0 + BLOCK_N, pos_hi)"), ("k0", "k1")) if transposed else \
        (("q0", "q1"), ("u0", "tl.minimum(u0 + BLOCK_N, pos_hi)"))
    lines = [f"hit = {walked}"]
    for p in probes:
        em = Emitter("pr_", wide=True, indent="        ")
        cond = em.cond(p.cond)
        qb, kb = p.q_block, p.k_block
        lines += [f"for iq in range(_fdiv({q_box[0]}, {qb}), tl.where(hit, _fdiv({q_box[0]}, {qb}), "
                  f"_fdiv({q_box[1]} - 1, {qb}) + 1)):",
                  "    pq = tl.cast(iq, tl.int64)",
                  f"    for ik in range({k_box[0]} // {kb}, ({k_box[1]} - 1) // {kb} + 1):",
                  "        pk = tl.cast(ik, tl.int64)",
                  *em.lines,
                  f"        hit = hit | {cond}"]
    return lines


def _full_loop_body(owners: list[tuple[int, _Piece]], how: Traversal) -> list[str]:
    """The full tiles' loop body: index t - d_m of piece m's full run is its tile f1 + (t - d_m)."""
    body = []
    for m in reversed(range(len(owners))):
        p = owners[m][1]
        u0 = p.u0(f"f1_{p.name} + t - d_{m}")
        body.append(f"u0 = {u0}" if m == len(owners) - 1 else f"u0 = tl.where(t < d_{m + 1}, {u0}, u0)")
    return body + [how.full_call]


def _dynamic_parts(i: int, br, plan: KernelPlan, how: Traversal, start: str):
    """(setup lines, loop lines, new total) of a branch's selected blocks and landmarks."""
    setup, loops, total = [], [], start
    if br.topk is not None:
        tk = br.topk
        per_group = f"(sel_n * (({tk.block} + BLOCK_N - 1) // BLOCK_N))"
        setup += [f"# topk(n={tk.n}, block={tk.block}): for each query group of the tile, its selected blocks",
                  "sel_n = stride_sr  # slots per row: the selection's width (its rows are contiguous)",
                  f"fg = _fdiv(Lk - Lq, {tk.block})  # the group of SEL row 0",
                  f"g_a = _fdiv(q0, {tk.block})",
                  f"n_sel = (_fdiv(q1 - 1, {tk.block}) + 1 - g_a) * {per_group}",
                  f"s_0 = {total}", "s_1 = s_0 + n_sel"]
        loops += ["for t in range(tl.maximum(t_a, s_0), tl.minimum(t_b, s_1)):",
                  "    tt = t - s_0",
                  f"    g = g_a + tt // {per_group}",
                  f"    slot = (tt // (({tk.block} + BLOCK_N - 1) // BLOCK_N)) % sel_n",
                  "    row = sel_base + (g - fg).to(tl.int64) * stride_sr",
                  "    j = tl.load(row + slot * stride_sn)",
                  "    # a row is ascending: a repeated id is skipped (a given selection may repeat one)",
                  "    j = tl.where(j == tl.load(row + (slot - 1) * stride_sn, mask=slot > 0, other=-1), -1, j)",
                  f"    lo_v = j * {tk.block}",
                  f"    hi_v = tl.minimum(lo_v + {tk.block}, Lk)",
                  f"    u0 = lo_v + (tt % (({tk.block} + BLOCK_N - 1) // BLOCK_N)) * BLOCK_N",
                  f"    q_lo = g * {tk.block}",
                  "    if j >= 0:",
                  "        " + how.selected.format(i=selected_mask_id(plan, i), block=tk.block)]
        total = "s_1"
    if br.landmarks is not None:
        lb = br.landmarks
        setup += [f"# landmarks(block={lb}): entry j is seen by the queries with j < q // {lb}",
                  f"nl = tl.maximum(tl.minimum(_fdiv(q1 - 1, {lb}), Lk // {lb}), 0)",
                  f"nl_all = tl.maximum(tl.minimum(_fdiv(q0, {lb}), Lk // {lb}), 0)  # entries every row sees",
                  f"l_0 = {total}", "l_1 = l_0 + (nl + BLOCK_N - 1) // BLOCK_N"]
        loops += ["for t in range(tl.maximum(t_a, l_0), tl.minimum(t_b, l_1)):",
                  "    u0 = (t - l_0) * BLOCK_N",
                  "    " + how.landmark.format(i=selected_mask_id(plan, i) + 1)]
        total = "l_1"
    return setup, loops, total


def _dkdv_selected(i: int, br, plan: KernelPlan) -> list[str]:
    """dK/dV of a branch's selected blocks: for each key block of the tile, the query groups
    that selected it (the inverse selection INV/IOFF), each a few query tiles. A split long
    tile does this in its part 0 only."""
    b = br.topk.block
    per = f"(({b} + BLOCK_N - 1) // BLOCK_N)"  # query tiles per group
    return [
        f"# topk(n={br.topk.n}, block={b}): the query groups whose selection holds a block of this key tile",
        "if part <= 0:",
        "    inv_base = INV + b64 * stride_ib + h64 * stride_ih",
        "    ioff_base = IOFF + b64 * stride_iob + h64 * stride_ioh",
        f"    fg = _fdiv(Lk - Lq, {b})  # the group of selection row 0",
        f"    e_0 = tl.load(ioff_base + k0 // {b})",
        f"    e_1 = tl.load(ioff_base + (k1 - 1) // {b} + 1)",
        f"    for t in range(e_0 * {per}, e_1 * {per}):",
        f"        key = tl.load(inv_base + t // {per})",
        "        j = key // SEL_ROWS",
        "        g = fg + (key % SEL_ROWS).to(tl.int32)",
        f"        k_in = key_ok & (k_pos >= j * {b}) & (k_pos < j * {b} + {b})",
        f"        u0 = g * {b} + (t % {per}) * BLOCK_N",
        f"        dk, dv = _kv_rows_step(dk, dv, k, v, k_pos, k_in, {_KV_ARGS}, u0, tl.maximum(g * {b}, off), "
        f"tl.minimum(g * {b} + {b}, Lk), h, hk, H, Hk, qk_scale, BLOCK_N, HEAD_DIM, HEAD_DIM_V, "
        f"{selected_mask_id(plan, i)}, DOT_PRECISION)"]


def _landmark_body(i: int, br, plan: KernelPlan) -> list[str]:
    """The landmark-entry backward of a branch (the dlm kernel): every query tile that sees an entry."""
    lb = br.landmarks
    if lb is None:
        return ["pass  # these heads see no landmark entry"]
    return [f"# landmarks(block={lb}): entry j is seen by the queries q >= (j + 1) * {lb}",
            f"qa = tl.maximum((s0 + 1) * {lb}, off)",
            f"q_all = k1 * {lb}  # from here on every entry of the tile is seen",
            "u_a = _floor_to(qa, BLOCK_N)",
            "n_t = tl.maximum(Lk - u_a + BLOCK_N - 1, 0) // BLOCK_N",
            "for t in range(part * n_t // SPLIT, (part + 1) * n_t // SPLIT):  # this part's share",
            "    u0 = u_a + t * BLOCK_N",
            f"    dk, dv = _kv_step(dk, dv, k, v, k_pos, key_ok, {_KV_ARGS}, u0, 0, qa, Lk, u0 < q_all, "
            f"h, hk, H, Hk, qk_scale, 1, BLOCK_N, HEAD_DIM, HEAD_DIM_V, {selected_mask_id(plan, i) + 1}, "
            "DOT_PRECISION, WIDE, q_base, do_base, False, q_base, False)"]


def _branches(plan: KernelPlan, walk: bool, how: Traversal | None, indent: int = 8) -> str:
    """Every branch's code under its head condition; `how` None: the landmark backward."""
    lines: list[str] = []
    for i, br in enumerate(plan.branches):
        body = _landmark_body(i, br, plan) if how is None else _branch_body(i, br, plan, walk, how)
        if len(plan.branches) == 1:
            lines += body
            continue
        em = Emitter(f"c{i}_", wide=True)
        cond = em.cond(br.cond)
        last = i == len(plan.branches) - 1 and cond == "True"
        lines.append(f"# heads: {_text(br.cond)}")
        if em.lines:
            # the condition's temporaries, computed before the chain of branches
            lines[:0] = em.lines
        lines.append("else:" if last else f"{'if' if i == 0 else 'elif'} {cond}:")
        lines += ["    " + line for line in body]
    return _indent(lines, indent)


def kernel_names(plan: KernelPlan) -> dict[str, str]:
    """{kind: kernel name} of the kernels of a plan's module (dlm: with landmark entries only)."""
    stem = _ident(plan.name)
    names = {"fwd": f"{stem}_fwd_kernel", "dq": f"{stem}_bwd_dq_kernel", "dkdv": f"{stem}_bwd_dkdv_kernel",
             "dlm": f"{stem}_bwd_landmarks_kernel", "guard": f"{stem}_fwd_guard_kernel"}
    if plan.landmarks is None:
        del names["dlm"]
    return names


def kernel_source(plan: KernelPlan, pattern_text: str, fixed_tiles: bool, head_dim: int,
                  block_n: int | None = None) -> tuple[str, dict[str, str]]:
    """(source, {kind: kernel name}) of the kernels of a plan (kinds: kernels/interface.py);
    autotuned over short config lists unless `fixed_tiles` (the interpreter, or
    tiles chosen by the caller, whose iterated tile is `block_n`)."""
    def fits(configs, strided, own_tile_too=True):
        # big heads need small tiles (registers): the iterated tile, and the backward's own tile
        big = head_dim > 128
        return [c for c in configs if (not strided or keep_config(plan, c[1], head_dim))
                and not (big and (c[1] > 64 or (own_tile_too and c[0] > 64)))]

    if fixed_tiles:
        walk = block_n is not None and all(b % block_n == 0 for b in plan.blocks)
    else:
        walk = bool(fits(GPU_CONFIGS, True, False)) and bool(fits(DQ_CONFIGS, True))
    names = kernel_names(plan)
    tunes = dict.fromkeys(names)  # fixed tiles (and the guard kernel): the caller passes BLOCK_M and BLOCK_N
    if not fixed_tiles:
        tunes.update(fwd=(fits(GPU_CONFIGS, walk, False), TUNE_KEY), dq=(fits(DQ_CONFIGS, walk), TUNE_KEY),
                     dkdv=(fits(DKDV_CONFIGS, False), TUNE_KEY),
                     dlm=(fits(DKDV_CONFIGS, False), '["HEAD_DIM", "HEAD_DIM_V", "H", "Hk"]'))
    src = _templates().get_template("kernels.py.jinja").render(
        pattern_name=plan.name, pattern_text=" ".join(pattern_text.split()), plan_hash=_HASH, kernels=KERNELS,
        names=names, tunes=tunes, landmarks=plan.landmarks, mask_functions=_mask_functions(plan),
        fwd_branches=_branches(plan, walk, FORWARD), dq_branches=_branches(plan, walk, DQ),
        dkdv_branches=_branches(plan, walk, DKDV, 12), dlm_branches=_branches(plan, walk, None, 12))
    # the hash of the text itself (the plan's repr would unfold its shared subexpressions)
    return src.replace(_HASH, hashlib.sha256(src.encode()).hexdigest()[:12], 1), names


_HASH = "{{plan_hash}}"  # rendered first, then replaced by the hash of the source holding it


def _ident(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name) or "pattern"
