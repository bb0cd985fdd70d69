"""Deterministic tile choice: a per-GPU table instead of the autotuner.

Autotuning keeps the config with the best single timing of a noisy first
call, so the same pattern and shape could get a different kernel in every
process (run-to-run swings of up to 2x in the benchmarks). On a GPU of the
table the kernels take the table's tiles: the same config in every process,
and one compile per kernel instead of one per config. Other GPUs autotune
over the short lists of kernels/generate.py; `SPARSEDSL_AUTOTUNE=1` makes
every GPU do so (to compare), and a call's `_config` overrides both."""
from __future__ import annotations

import os

import torch

from ..ir.plan import KernelPlan
from .generate import keep_config

# (BLOCK_M, BLOCK_N, num_warps, num_stages) by compute capability, kernel kind and head dim
# (up to 128, or larger). Hopper: measured on an H200 with TMA loads (benchmarks/tile_sweep.py,
# 16K, B=1, H=16, D=128, bf16; docs/benchmarks.md): best or within 2% of the best on causal and
# on chunked(2048). The large-head rows keep the register limits of generate.py's lists.
TABLE = {
    (9, 0): {
        "fwd": {128: (64, 64, 4, 3), 256: (64, 32, 4, 2)},
        "dq": {128: (64, 64, 4, 2), 256: (64, 32, 4, 3)},
        "dkdv": {128: (64, 64, 4, 2), 256: (64, 32, 4, 3)},
    },
}
AUTOTUNE = os.environ.get("SPARSEDSL_AUTOTUNE", "0") == "1"
_CAPABILITY: dict = {}


def table_config(kind: str, plan: KernelPlan, head_dim: int, device: torch.device):
    """The table's tiles for kernel `kind` on `device`, or None (autotune). A strided plan
    whose blocks the table's key tile does not divide takes the largest tile that does."""
    if AUTOTUNE or device.type != "cuda":
        return None
    per_kind = TABLE.get(_capability(device), {}).get(kind)
    if per_kind is None:
        return None
    bm, bn, warps, stages = per_kind[128 if head_dim <= 128 else 256]
    while bn > 16 and not keep_config(plan, bn, head_dim):
        bn //= 2
    return (bm, bn, warps, stages) if keep_config(plan, bn, head_dim) else None


def _capability(device: torch.device) -> tuple[int, int]:
    cap = _CAPABILITY.get(device.index)
    if cap is None:
        cap = _CAPABILITY[device.index] = torch.cuda.get_device_capability(device)
    return cap
