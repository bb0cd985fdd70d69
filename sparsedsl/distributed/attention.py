"""Context-parallel attention: each rank holds a shard of one sequence and gets
the attention of its own queries over the whole sequence.

Forward, on every rank: start the exchange (each rank sends every other rank the
rows of its K and V that the other's queries may see, by the exchange plan), compute
the local queries over the local keys they need, then over each received piece in
ascending rank order, merging the partial results by their log-sum-exp in that
order. Backward: the gradients of each received piece go back to its owner the
same way, reversed; an owner adds the pieces' gradients of its keys in ascending
rank order (its own among them). Both are deterministic: nothing depends on
which message arrives first.
"""
from __future__ import annotations

import functools

import torch

from .comm import Group, check_shards
from .exchange import DEFAULT_BLOCK, ExchangePlan, exchange_plan
from .layout import check_layout, local_rows
from .partial import check_backend, check_kernel_inputs, compute_dtype, merge, partial_attention, partial_grads

FORWARD, BACKWARD = 0, 1  # message tags

plan_of = functools.lru_cache(maxsize=32)(exchange_plan)


def attention(p, q, k, v, *, group=None, layout: str = "zigzag", scale=None, return_lse: bool = False,
              backend: str = "auto", block: int = DEFAULT_BLOCK):
    """Context-parallel attention under the static pattern `p` (a CompiledPattern)
    over one sequence split across the ranks of `group` (None: the default group).

    q [B, H, n, D], k [B, Hk, n, D], v [B, Hk, n, Dv]: this rank's shard, the rows of
    its positions in `layout` ("zigzag" or "contiguous", layout.py; `shard` cuts
    them). Returns this rank's out [B, H, n, Dv] (and lse [B, H, n] with
    return_lse=True), equal to the rows of single-process attention over the whole
    sequence; differentiable in q, k, v (the backward is collective too: every rank
    runs it). `block`: the query rows per tile of the exchange plan. Every rank must
    call with the same pattern and arguments."""
    what = "sparsedsl.distributed.attention"
    check_layout(layout)
    backend = check_backend(backend)
    g = Group.of(group, what)
    length, scale = check_shards(g, q, k, v, scale, layout, what)
    if backend == "triton":  # (the same dtype on every rank: no rank raises alone)
        check_kernel_inputs(q)
    xplan = plan_of(p, length, g.world, layout, q.shape[1], k.shape[1], block)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = _Attention.apply(q, k, v, _Run(p, xplan, g, scale, backend))
    return (out, lse) if return_lse else out


class _Run:
    """One call's fixed parts: the pattern, the exchange plan, the group and the scale."""

    def __init__(self, p, xplan: ExchangePlan, g: Group, scale: float, backend: str):
        self.p, self.x, self.g, self.scale, self.backend = p, xplan, g, scale, backend
        me = g.rank
        self.shard = xplan.shards[me]
        self.sources = [o for o in range(g.world) if o != me and xplan.needs[me][o]]  # whose keys come in
        self.targets = [r for r in range(g.world) if r != me and xplan.needs[r][me]]  # who gets my keys

    def rows(self, receiver: int) -> torch.Tensor:
        """Local rows of this rank's keys that `receiver` needs."""
        return local_rows(self.shard, self.x.needs[receiver][self.g.rank])

    def partial(self, q, k, v, k_pos):
        return partial_attention(self.p, q, k, v, self.shard, k_pos, self.scale, self.backend, self.x.length)

    def forward(self, q, k, v):
        """(out, lse) in the compute dtype, and the pieces [(owner, k, v, positions)]
        in merge order: this rank's own keys first, then the others' by rank."""
        me, d = self.g.rank, k.shape[-1]
        kv = torch.cat([k, v], dim=-1)  # one message per pair of ranks
        sends = {r: kv[:, :, self.rows(r).to(kv.device)].contiguous() for r in self.targets}
        receives = {o: kv.new_empty((*kv.shape[:2], self.x.keys(me, o), kv.shape[-1])) for o in self.sources}
        messages = self.g.exchange(sends, receives, FORWARD)
        pieces = []
        if self.x.needs[me][me]:
            rows = self.rows(me).to(k.device)
            pieces.append((me, k[:, :, rows], v[:, :, rows], self.x.needs[me][me]))
        pieces += [(o, receives[o][..., :d], receives[o][..., d:], self.x.needs[me][o]) for o in self.sources]
        cd = compute_dtype(q.dtype)
        out = q.new_zeros((*q.shape[:3], v.shape[-1]), dtype=cd)
        lse = q.new_full(q.shape[:3], float("-inf"), dtype=cd)
        for owner, kp, vp, k_pos in pieces:
            messages.wait(owner)
            out, lse = merge(out, lse, *self.partial(q, kp, vp, k_pos))
        messages.finish()
        return out, lse, pieces

    def backward(self, q, k, v, out, lse, pieces, dout, dlse):
        """(dq, dk, dv): dq from every piece; the received pieces' dk/dv sent to their
        owners, whose contributions to this rank's keys are added by rank."""
        me, cd, d = self.g.rank, out.dtype, k.shape[-1]
        dout, dlse = dout.to(cd), dlse.to(cd)
        grads = {}  # owner -> (dq, dk|dv) of its piece
        # the received pieces first: their gradients go out while the local one is computed
        for owner, kp, vp, k_pos in pieces:
            if owner != me:
                grads[owner] = self._piece_grads(q, kp, vp, k_pos, out, lse, dout, dlse)
        receives = {r: out.new_empty((*k.shape[:2], self.x.keys(r, me), k.shape[-1] + v.shape[-1]))
                    for r in self.targets}
        messages = self.g.exchange({o: grads[o][1] for o in self.sources}, receives, BACKWARD)
        for owner, kp, vp, k_pos in pieces:
            if owner == me:
                grads[me] = self._piece_grads(q, kp, vp, k_pos, out, lse, dout, dlse)
        dq = torch.zeros_like(q, dtype=cd)
        for owner, _, _, _ in pieces:
            dq += grads[owner][0]
        dkv = out.new_zeros((*k.shape[:3], k.shape[-1] + v.shape[-1]))
        for r in range(self.g.world):  # every contribution to this rank's keys, by rank
            if r == me and me in grads:
                part = grads[me][1]
            elif r in receives:
                messages.wait(r)
                part = receives[r]
            else:
                continue
            dkv.index_add_(2, self.rows(r).to(dkv.device), part)
        messages.finish()
        return dq.to(q.dtype), dkv[..., :d].to(k.dtype), dkv[..., d:].to(v.dtype)

    def _piece_grads(self, q, kp, vp, k_pos, out, lse, dout, dlse):
        """(dq, dk|dv) of one piece, from the merged out and lse (partial_grads)."""
        dq, dk, dv = partial_grads(self.p, q, kp, vp, self.shard, k_pos, self.scale, self.backend, self.x.length,
                                   out, lse, dout, dlse)
        return dq, torch.cat([dk, dv], dim=-1).contiguous()


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, run: _Run):
        out, lse, pieces = run.forward(q, k, v)
        ctx.run, ctx.pieces = run, pieces
        ctx.save_for_backward(q, k, v, out, lse)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.run.backward(q, k, v, out, lse, ctx.pieces, dout, dlse)
        return dq, dk, dv, None
