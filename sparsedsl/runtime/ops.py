"""The kernels as PyTorch operators: `sparsedsl::attention` and its backward,
registered with torch.library (so torch.compile sees them as one opaque op,
with a fake implementation for shapes, and no graph break) and made
differentiable with register_autograd.

A pattern travels through the op as a key into a table of compiled IRs (ops
take tensors and plain values only). The table holds the IRs weakly, so a
dropped pattern frees its entry; keys are never reused. The ops find a
pattern's kernel plan from its IR (plan_for: the last step of the compile
pipeline, run once per IR and handed to the kernels). Triton is imported on
the first launch, not with this module, so that TRITON_INTERPRET can still be
set before it."""
from __future__ import annotations

import itertools
import threading
import weakref
from typing import Optional

import torch

from ..errors import InputError
from ..ir import nodes as ir
from ..ir.check import dynamic_atoms
from ..ir.plan import KernelPlan
from ..ir.topk import num_groups, padded_groups
from ..passes.dynamic import Unsupported, decode_topk
from ..passes.plan import kernel_plan
from ..atoms.dynamic import AttentionScore
from ..reference.select import select_given

# Weak both ways: a server compiling patterns per request must not keep them all.
_PATTERNS: weakref.WeakValueDictionary[str, ir.Pattern] = weakref.WeakValueDictionary()
_KEYS: weakref.WeakKeyDictionary[ir.Pattern, str] = weakref.WeakKeyDictionary()
# The kernel plan of each IR, freed with it (a plan never refers back to its IR).
_PLANS: weakref.WeakKeyDictionary[ir.Pattern, KernelPlan] = weakref.WeakKeyDictionary()
_COUNT = itertools.count()
_LOCK = threading.Lock()


def pattern_key(root: ir.Pattern) -> str:
    """The key under which the ops find this (interned, immutable) IR, for as
    long as the IR is alive (a CompiledPattern holds it)."""
    with _LOCK:
        key = _KEYS.get(root)
        if key is None:
            key = _KEYS[root] = f"{root.name}#{next(_COUNT)}"
            _PATTERNS[key] = root
        return key


def _root(key: str) -> ir.Pattern:
    root = _PATTERNS.get(key)
    if root is None:
        raise InputError(f"pattern key {key!r} is no longer alive: its CompiledPattern was freed while a call "
                         "(e.g. a torch.compile'd graph) still used it; keep a reference to the pattern")
    return root


def plan_for(root: ir.Pattern) -> KernelPlan:
    """The kernel plan of a compiled IR (passes/plan.py kernel_plan: the optimizer,
    then the lowering), computed once while the IR lives; the CompiledPattern keeps
    it. InputError when the pattern has no generated kernels."""
    plan = _PLANS.get(root)
    if plan is None:
        try:
            plan = kernel_plan(root)
        except Unsupported as e:
            raise InputError(f"pattern {root.name!r}: {e}") from None
        with _LOCK:
            plan = _PLANS.setdefault(root, plan)
    return plan


def _plan(key: str) -> KernelPlan:
    return plan_for(_root(key))


def _varlen(cu_q, cu_k, max_q, max_k, padded=False):
    from ..kernels import launch

    return None if cu_q is None else launch.Varlen(cu_q, cu_k, max_q, max_k, padded)


def _view(t: torch.Tensor, packed: bool) -> torch.Tensor:
    """[T, H, D] -> the kernels' [1, H, T, D] view; [B, H, L, D] as it is."""
    return t.transpose(0, 1).unsqueeze(0) if packed else t


def _config(config: list[int]):
    """[] = autotune; [block_m, block_n] or [block_m, block_n, num_warps, num_stages] = fixed tiles."""
    return tuple(config) or None


@torch.library.custom_op("sparsedsl::attention", mutates_args=())
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: str, scale: float,
              cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: int,
              max_seqlen_k: int, config: list[int],
              selection: Optional[torch.Tensor], padded: bool,
              deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """out like q (v's head dim) and lse float32: [B, H, Lq], or [H, T] for a packed batch.
    `selection`: the topk selection of a dynamic pattern (sparsedsl::select). `padded`: a
    padded batch, cu_seqlens_q/k being int32 [B, 2] (first row, length) per entry.
    `deterministic`: the backward's (kernels/launch.py backward)."""
    from ..kernels import launch, prefix
    from ..kernels.selection import packed_views, prefill_inputs

    packed = cu_seqlens_q is not None and not padded
    landmarks = sums = None
    plan = _plan(pattern)
    if plan.dynamic:
        if packed:  # each sequence on its own (its blocks from its first row)
            qx, kx, vx, rows, lengths = packed_views(_view(q, True), _view(k, True), _view(v, True), cu_seqlens_q,
                                                     cu_seqlens_k, max_seqlen_q, max_seqlen_k)
            selection, landmarks = prefill_inputs(plan, qx, kx, vx, selection, rows, lengths)
        else:
            rows = (cu_seqlens_q, cu_seqlens_k) if padded else None
            selection, landmarks = prefill_inputs(plan, q, k, v, selection, rows)
    if plan.compensation:
        sums = prefix.prefill(_view(k, packed), _view(v, packed), cu_seqlens_k if padded else None,
                              cu_seqlens_q.numel() - 1 if packed else None)
    out, lse = launch.forward(plan, _view(q, packed), _view(k, packed), _view(v, packed), scale,
                              interpret=not q.is_cuda, config=_config(config),
                              varlen=_varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, padded),
                              selection=selection, landmarks=landmarks, prefix=sums)
    return (out[0].transpose(0, 1), lse[0]) if packed else (out, lse)


@attention.register_fake
def _(q, k, v, pattern, scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, config, selection, padded,
      deterministic=True):
    if cu_seqlens_q is not None and not padded:
        return q.new_empty((*q.shape[:2], v.shape[-1])), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return q.new_empty((*q.shape[:3], v.shape[-1])), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("sparsedsl::attention_backward", mutates_args=())
def attention_backward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
                       dout: torch.Tensor, dlse: Optional[torch.Tensor], pattern: str, scale: float,
                       cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
                       max_seqlen_q: int, max_seqlen_k: int, config: list[int],
                       selection: Optional[torch.Tensor], padded: bool,
                       deterministic: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels import launch

    packed = cu_seqlens_q is not None and not padded
    grads = launch.backward(_plan(pattern), _view(q, packed), _view(k, packed), _view(v, packed),
                            _view(out, packed), lse.unsqueeze(0) if packed else lse, _view(dout, packed),
                            scale, interpret=not q.is_cuda, config=_config(config),
                            varlen=_varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, padded),
                            dlse=None if dlse is None else (dlse.unsqueeze(0) if packed else dlse),
                            selection=selection, deterministic=deterministic)
    return tuple(g[0].transpose(0, 1) if packed else g for g in grads)


@attention_backward.register_fake
def _(q, k, v, out, lse, dout, dlse, pattern, scale, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
      config, selection, padded, deterministic=True):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup(ctx, inputs, output):
    q, k, v, pattern, scale, cu_q, cu_k, max_q, max_k, config, selection, padded, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, selection)
    ctx.args = (pattern, scale, max_q, max_k, config, padded, deterministic)
    # the backward may run after the pattern itself was dropped: its IR (which keeps its plan) stays alive here
    ctx.root = _PATTERNS.get(pattern)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_q, cu_k, selection = ctx.saved_tensors
    pattern, scale, max_q, max_k, config, padded, deterministic = ctx.args
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = attention_backward(q, k, v, out, lse, dout, dlse, pattern, scale, cu_q, cu_k, max_q, max_k,
                                    config, selection, padded, deterministic)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup)


@torch.library.custom_op("sparsedsl::select", mutates_args=())
def select(q: torch.Tensor, k: torch.Tensor, pattern: str, q_rows: Optional[torch.Tensor] = None,
           kv_rows: Optional[torch.Tensor] = None, max_q: int = 0, max_k: int = 0,
           scale: Optional[float] = None) -> torch.Tensor:
    """The topk selection of a dynamic pattern: int32 [B, H, R, n] (kernels/selection.py);
    q_rows/kv_rows: a padded batch's int32 [B, 2] (first row, length) per entry; or a packed
    batch (q [Tq, H, D], k [Tk, Hk, D]): its cu_seqlens and longest lengths, [S, H, R, n].
    `scale`: the logits' of topk(score=attention(...)) (default 1 / sqrt(D))."""
    from ..kernels.selection import packed_views, prefill_inputs

    plan = _plan(pattern)
    rows, lengths = (None if q_rows is None else (q_rows, kv_rows)), None
    if q.dim() == 3:
        q, k, _, rows, lengths = packed_views(_view(q, True), _view(k, True), _view(k, True), q_rows, kv_rows,
                                              max_q, max_k)
    if isinstance(plan.topk.score, AttentionScore):
        return _attention_selection(plan.topk, q, k, scale, rows, lengths)
    return prefill_inputs(plan, q, k, k, rows=rows, lengths=lengths)[0]


def _attention_selection(t, q, k, scale, rows, lengths) -> torch.Tensor:
    """topk(score=attention(...)) on the kernels: the block scores of kernels/votes.py, every
    selection row taking its n best candidates of them (select_given, on the device)."""
    from ..kernels.votes import block_scores

    lq, lk = lengths if lengths is not None else (q.shape[2], k.shape[2])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = block_scores(q, k, t.score.window, t.score.pool, t.block, scale, lk, rows)
    b, h, nb = scores.shape
    if rows is None:
        r, q_len, kv_len = num_groups(lq, lk, t.block), lq, lk
    else:
        r, q_len, kv_len = padded_groups(lq, t.block), rows[0][:, 1], rows[1][:, 1]
    return select_given(scores[:, :, None].expand(b, h, r, nb), min(t.n, nb), t.block, q_len, kv_len, t.causal, h)


@select.register_fake
def _(q, k, pattern, q_rows=None, kv_rows=None, max_q=0, max_k=0, scale=None):
    t = decode_topk(next(a for a in dynamic_atoms(_root(pattern)) if a.kind == "topk"))
    if q.dim() == 3:  # packed
        return q.new_empty((q_rows.shape[0] - 1, q.shape[1], padded_groups(max_q, t.block), t.n), dtype=torch.int32)
    r = num_groups(q.shape[2], k.shape[2], t.block) if q_rows is None else padded_groups(q.shape[2], t.block)
    return q.new_empty((q.shape[0], q.shape[1], r, t.n), dtype=torch.int32)
