"""Learnable attention sinks (gpt-oss): one logit per query head that joins every row's
softmax denominator, with no key and no value.

With the pattern's output O and log-sum-exp L of a row, and the head's sink logit s,
the row's softmax over its visible keys and the sink has

    L' = log(exp(L) + exp(s)),    O' = O * exp(L - L')

(the visible keys keep their relative weights; the sink takes exp(s - L') of the mass
and contributes nothing). This is computed from the kernels' O and L, so the forward,
the backward (autograd through L: the kernels take the LSE's gradient) and decoding
all get it, and the sinks their gradient. A row that sees no key gets O' = 0 and
L' = s. It costs one elementwise pass over the output."""
from __future__ import annotations

import torch

from ..errors import InputError

# A sink of -inf means no sink; clamped here, so that a row that sees nothing keeps O' = 0
# and finite gradients (exp(-inf - (-inf)) would be NaN).
_NO_SINK = -1e30


def check_sinks(sinks, q: torch.Tensor, what: str = "attention") -> None:
    """sinks: a floating tensor of shape [H] (one logit per query head: q's axis 1, also for a
    packed [T, H, D] q) on q's device. Its values are not read (that would wait for the GPU):
    a NaN sink gives NaN rows."""
    heads = q.shape[1]
    if not isinstance(sinks, torch.Tensor):
        raise InputError(f"{what}: sinks must be a tensor of shape [{heads}] (one logit per query head), "
                         f"got {type(sinks).__name__}")
    if tuple(sinks.shape) != (heads,):
        raise InputError(f"{what}: sinks must have shape [{heads}] (one logit per query head), got "
                         f"{list(sinks.shape)}")
    if not sinks.is_floating_point():
        raise InputError(f"{what}: sinks must be a floating-point tensor, got {sinks.dtype}")
    if sinks.device != q.device:
        raise InputError(f"{what}: sinks are on {sinks.device}, q on {q.device}")


def with_sinks(out: torch.Tensor, lse: torch.Tensor, sinks: torch.Tensor, packed: bool = False):
    """(O', L') of the docstring above: out [B, H, L, Dv] and lse [B, H, L], or a packed
    batch's out [T, H, Dv] and lse [H, T] (or [1, H, T])."""
    work = torch.float64 if lse.dtype == torch.float64 else torch.float32
    s = sinks.to(work).clamp(min=_NO_SINK)
    lse_in = lse.to(work)
    lse_out = torch.logaddexp(lse_in, s[:, None])
    w = torch.exp(lse_in - lse_out)  # [..., H, rows]
    # the weights laid out like out's rows
    w = w.reshape(out.shape[1], out.shape[0]).transpose(0, 1) if packed else w.reshape(out.shape[:-1])
    return (out.to(work) * w[..., None]).to(out.dtype), lse_out.to(lse.dtype)
