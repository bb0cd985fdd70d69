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
    """The backend partial_attention runs: "auto" is the reference for now."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    if backend == "triton":
        raise InputError("sparsedsl.distributed: backend='triton' is not there yet: the generated kernels place "
                         "query row i at position Lk - Lq + i and key j at j, and context parallelism needs "
                         "global query and key offsets (docs/distributed.md); use backend='reference'")
    return "reference"


def partial_attention(p, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: Ranges, k_pos: Ranges,
                      scale: float, backend: str = "reference") -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the queries q [B, H, Lq, D] at the global positions `q_pos`
    over the keys k, v [B, Hk, Lk, D/Dv] at `k_pos` under the static pattern `p`:
    (out [B, H, Lq, Dv], lse [B, H, Lq]), both in the compute dtype (float32;
    float64 for float64 inputs). Positions are (start, length) ranges whose rows
    are the tensors' rows in order. A row that sees none of these keys gets
    out 0 and lse -inf. Differentiable in q, k and v (autograd through the
    reference)."""
    check_backend(backend)
    cd = compute_dtype(q.dtype)
    pos = (positions(q_pos, q.device), positions(k_pos, q.device))
    return reference_attention(p.root, q.to(cd), k.to(cd), v.to(cd), scale=scale, positions=pos)


def weight(part_lse: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """exp(part_lse - lse): a partial result's share of the merged one (0 where
    the part saw nothing)."""
    return torch.where(part_lse == float("-inf"), torch.zeros_like(lse), torch.exp(part_lse - lse))


def merge(out_a, lse_a, out_b, lse_b) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention over the keys of two partial results (disjoint keys)."""
    lse = torch.logaddexp(lse_a, lse_b)
    return weight(lse_a, lse).unsqueeze(-1) * out_a + weight(lse_b, lse).unsqueeze(-1) * out_b, lse
