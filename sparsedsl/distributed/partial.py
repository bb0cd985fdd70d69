"""The local compute of context parallelism: attention of some queries over some
keys, both at global positions, and the merge of such partial results by their
log-sum-exp."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..reference.attention import reference_attention
from .layout import Ranges, positions

BACKENDS = ("auto", "reference", "triton")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What partial results are computed, kept and merged in: float64 for
    float64 inputs, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_backend(backend) -> str:
    """The backend partial_attention runs: "auto" is the reference for now (the
    kernels' path has not run on a GPU yet)."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    return "triton" if backend == "triton" else "reference"


def check_kernel_inputs(q: torch.Tensor) -> None:
    """InputError where backend='triton' cannot take q's dtype or device."""
    if q.dtype == torch.float64:
        raise InputError("sparsedsl.distributed: backend='triton' takes float32, float16 and bfloat16 inputs; "
                         "float64 runs on backend='reference'")
    if not q.is_cuda:
        from ..kernels.launch import interpreter_ready

        if not interpreter_ready():
            raise InputError("sparsedsl.distributed: backend='triton' on CPU tensors runs the kernels in Triton's "
                             "interpreter, which must be switched on before triton is imported: set "
                             "TRITON_INTERPRET=1 in the environment")


def partial_attention(p, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: Ranges, k_pos: Ranges,
                      scale: float, backend: str = "reference",
                      length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the queries q [B, H, Lq, D] at the global positions `q_pos`
    over the keys k, v [B, Hk, Lk, D/Dv] at `k_pos` under the static pattern `p`:
    (out [B, H, Lq, Dv], lse [B, H, Lq]), both in the compute dtype (float32;
    float64 for float64 inputs). Positions are (start, length) ranges whose rows
    are the tensors' rows in order. A row that sees none of these keys gets
    out 0 and lse -inf. Differentiable in q, k and v (autograd through the
    reference; backend="triton": the kernels' backward). `length`: the sequence's
    (the kernels' plan bounds keys by it; default: the end of the last position given)."""
    if check_backend(backend) == "triton":
        check_kernel_inputs(q)
        return _Kernels.apply(q, k, v, _OnKernels(p, q_pos, k_pos, scale, _length(length, q_pos, k_pos)))
    cd = compute_dtype(q.dtype)
    pos = (positions(q_pos, q.device), positions(k_pos, q.device))
    return reference_attention(p.root, q.to(cd), k.to(cd), v.to(cd), scale=scale, positions=pos)


def partial_grads(p, q, k, v, q_pos: Ranges, k_pos: Ranges, scale: float, backend: str, length: int | None,
                  out, lse, dout, dlse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of one piece of a softmax over more keys: q at `q_pos` and the piece's
    keys k, v at `k_pos` (as in partial_attention), where the whole softmax's out and lse
    (compute dtype) got the gradients dout and dlse. Returns (dq, dk, dv) in the compute
    dtype: the piece's share of dq, and the gradients of its keys. The reference recomputes
    the piece's partial result, whose output gets the gradient w * dout and its lse
    w * (dlse + <dout, out_i - out>), w = exp(lse_i - lse) its share of the whole; the
    kernels take the whole's out and lse directly (their probabilities exp(s - lse) are the
    whole softmax's), with no recompute."""
    cd = out.dtype
    if check_backend(backend) == "triton":
        run = _OnKernels(p, q_pos, k_pos, scale, _length(length, q_pos, k_pos))
        return run.backward(q, k, v, out, lse, dout, dlse)
    with torch.enable_grad():
        qi, ki, vi = (x.detach().to(cd).requires_grad_() for x in (q, k, v))
        out_i, lse_i = partial_attention(p, qi, ki, vi, q_pos, k_pos, scale, backend, length)
    w = weight(lse_i.detach(), lse)
    dout_i = w.unsqueeze(-1) * dout
    dlse_i = w * (dlse + ((out_i.detach() - out) * dout).sum(-1))
    return torch.autograd.grad((out_i, lse_i), (qi, ki, vi), (dout_i, dlse_i))


def weight(part_lse: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(part_lse - lse): a partial result's share of the merged one (0 where
    the part saw nothing)."""
    return torch.where(part_lse == float("-inf"), torch.zeros_like(lse), torch.exp(part_lse - lse))


def merge(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention over the keys of two partial results (disjoint keys)."""
    lse = torch.logaddexp(lse_a, lse_b)
    return weight(lse_a, lse).unsqueeze(-1) * out_a + weight(lse_b, lse).unsqueeze(-1) * out_b, lse


def _length(length: int | None, q_pos: Ranges, k_pos: Ranges) -> int:
    """The sequence's length: `length`, or the end of the last position given."""
    return max((s + n for s, n in (*q_pos, *k_pos)), default=0) if length is None else length


def _rows(ranges: Ranges):
    """(rows, start) of each non-empty range: its rows follow those of the ranges before it."""
    first = 0
    for start, n in ranges:
        if n > 0:
            yield slice(first, first + n), start
        first += n


class _OnKernels:
    """partial_attention on the generated kernels: one launch per pair of a query
    range and a key range, each at its global positions (kernels/launch.py Positions).
    The forward merges a query range's pairs by LSE in order of the key ranges. The
    backward runs each pair's backward kernels with its query range's merged out and
    lse: the probabilities exp(s - lse) of the softmax over every key of the piece,
    so each pair gives its keys' dk, dv and its share of dq, added in the same order."""

    def __init__(self, p, q_pos: Ranges, k_pos: Ranges, scale: float, length: int):
        from ..kernels.launch import Positions

        self.plan, self.scale = p.plan, scale
        self.pairs = [(qr, kr, Positions(qs, ks, length, length)) for qr, qs in _rows(q_pos)
                      for kr, ks in _rows(k_pos)]

    def forward(self, q, k, v):
        from ..kernels import launch

        cd = compute_dtype(q.dtype)
        out = q.new_zeros((*q.shape[:3], v.shape[-1]), dtype=cd)
        lse = q.new_full(q.shape[:3], float("-inf"), dtype=cd)
        for qr, kr, pos in self.pairs:
            part = launch.forward(self.plan, q[:, :, qr], k[:, :, kr], v[:, :, kr], self.scale, not q.is_cuda,
                                  positions=pos, out_dtype=cd)
            out[:, :, qr], lse[:, :, qr] = merge(out[:, :, qr], lse[:, :, qr], *part)
        return out, lse

    def backward(self, q, k, v, out, lse, dout, dlse):
        """(dq, dk, dv) in out's dtype (the compute dtype), from the out and lse of a softmax
        over these keys and maybe more (partial_grads)."""
        from ..kernels import launch

        cd = out.dtype
        dq, dk, dv = (torch.zeros_like(x, dtype=cd) for x in (q, k, v))
        dout = dout.to(q.dtype)  # (the kernels multiply dO with V in the inputs' dtype)
        for qr, kr, pos in self.pairs:
            grads = launch.backward(self.plan, q[:, :, qr], k[:, :, kr], v[:, :, kr], out[:, :, qr], lse[:, :, qr],
                                    dout[:, :, qr], self.scale, not q.is_cuda, dlse=dlse[:, :, qr].to(cd),
                                    positions=pos, grad_dtype=cd)
            for g, part, rows in zip((dq, dk, dv), grads, (qr, kr, kr)):
                g[:, :, rows] += part
        return dq, dk, dv


class _Kernels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, run: _OnKernels):
        out, lse = run.forward(q, k, v)
        ctx.run = run
        ctx.save_for_backward(q, k, v, out, lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = ctx.run.backward(q, k, v, out, lse, dout, dlse)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None
