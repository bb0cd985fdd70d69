"""Checks of what a user passes to a compiled pattern: clear InputErrors, never
a raw torch error or a silently wrong result."""
from __future__ import annotations

import math

import torch

from ..errors import InputError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_size(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_heads(num_heads, num_kv_heads) -> tuple[int, int]:
    num_heads = check_size("num_heads", num_heads, 1)
    num_kv_heads = num_heads if num_kv_heads is None else check_size("num_kv_heads", num_kv_heads, 1)
    if num_heads % num_kv_heads:
        raise InputError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
    return num_heads, num_kv_heads


def check_qk(q, k, what: str = "select_blocks") -> None:
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise InputError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise InputError(f"{what}: {name} must have 4 dimensions [batch, heads, length, head_dim], "
                             f"got shape {tuple(t.shape)}")
        if t.dtype not in FLOAT_DTYPES:
            raise InputError(f"{what}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if q.device != k.device:
        raise InputError(f"{what}: q is on {q.device} but k is on {k.device}")
    if q.shape[0] != k.shape[0]:
        raise InputError(f"{what}: batch sizes differ: q has {q.shape[0]}, k has {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise InputError(f"{what}: head dims differ: q has {q.shape[3]}, k has {k.shape[3]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        raise InputError(f"{what}: the number of query heads ({q.shape[1]}) must be a multiple of the "
                         f"number of KV heads ({k.shape[1]})")


def check_qkv(q, k, v, scale) -> float | None:
    check_qk(q, k, "attention")
    if not isinstance(v, torch.Tensor):
        raise InputError(f"attention: v must be a torch.Tensor, got {type(v).__name__}")
    if v.dim() != 4:
        raise InputError(f"attention: v must have 4 dimensions [batch, kv_heads, length, head_dim], "
                         f"got shape {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise InputError(f"attention: q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if v.device != q.device:
        raise InputError(f"attention: q is on {q.device} but v is on {v.device}")
    if v.shape[:3] != k.shape[:3]:
        raise InputError(f"attention: k and v must agree in [batch, kv_heads, length], got "
                         f"{tuple(k.shape[:3])} and {tuple(v.shape[:3])}")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise InputError(f"attention: scale must be a finite number, got {scale!r}")
        return float(scale)
    return None
