"""The row layout of a topk selection (int32 [B, H, R, n]), shared by the
reference, the kernels and the runtime's shape checks.

Query rows are grouped by absolute query block: row i of a call with Lq
queries and Lk keys sits at q = Lk - Lq + i and belongs to group q // block.
Selections are indexed by group - first_group, first_group = (Lk - Lq) // block.
"""
from __future__ import annotations


def first_group(q_len: int, kv_len: int, block: int) -> int:
    return (kv_len - q_len) // block


def num_groups(q_len: int, kv_len: int, block: int) -> int:
    """R: the selection rows of a call (0 without queries)."""
    if q_len == 0:
        return 0
    return (kv_len - 1) // block - first_group(q_len, kv_len, block) + 1


def padded_groups(q_len: int, block: int) -> int:
    """R of a padded batch (q_lengths / kv_lengths): each entry's rows count from its own
    first group, and an entry of at most q_len queries spans at most this many groups,
    whatever its alignment (its rows past its own last group are unused)."""
    if q_len == 0:
        return 0
    return -(-(q_len - 1) // block) + 1
