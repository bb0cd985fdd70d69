"""The process group as context parallelism uses it: its rank and size, the
check that every rank called with fitting shards, and batches of point-to-point
messages."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import InputError
from ..runtime import inputs
from .layout import ranges_size, shard_ranges

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# what every rank reports of its call, in this order
_FIELDS = ("ok", "batch", "heads", "kv heads", "query rows", "key rows", "value rows", "head dim", "value head dim",
           "dtype")


@dataclass(frozen=True)
class Group:
    """A process group (None: the default group), with this process's rank in it."""

    group: object
    rank: int
    world: int

    @staticmethod
    def of(group, what: str) -> "Group":
        if not (dist.is_available() and dist.is_initialized()):
            raise InputError(f"{what}: torch.distributed is not initialised: call "
                             "torch.distributed.init_process_group(...) on every rank first")
        try:
            rank, world = dist.get_rank(group), dist.get_world_size(group)
        except (RuntimeError, ValueError) as e:
            raise InputError(f"{what}: group is not a process group this rank belongs to ({e})") from None
        if rank < 0:
            raise InputError(f"{what}: this process is not a member of the given group")
        return Group(group, rank, world)

    def exchange(self, sends: dict, receives: dict, tag: int) -> "Messages":
        """Start sending sends[r] to rank r and receiving receives[o] (filled in
        place) from rank o, all at once (one batch: NCCL needs every rank's sends and
        receives of a step in one group call)."""
        ops = [dist.P2POp(dist.irecv, t, group=self.group, tag=tag, group_peer=o) for o, t in receives.items()]
        ops += [dist.P2POp(dist.isend, t, group=self.group, tag=tag, group_peer=r) for r, t in sends.items()]
        works = dist.batch_isend_irecv(ops) if ops else []
        return Messages(list(receives), works, list(sends.values()))


class Messages:
    """Messages in flight. `wait(o)` returns when the message from rank o is in; a
    backend that coalesces the batch into one request (NCCL) waits for all of it."""

    def __init__(self, sources: list[int], works: list, keep: list):
        self._works = works
        self._keep = keep  # (the send buffers live until the messages are out)
        per_op = len(works) == len(sources) + len(keep)
        self._recv = {o: works[i] for i, o in enumerate(sources)} if per_op else {}

    def wait(self, source: int) -> None:
        work = self._recv.pop(source, None)
        if work is None:
            self.finish()
        else:  # (each request is waited for once: gloo's wait on a finished receive waits for another)
            self._works.remove(work)
            work.wait()

    def finish(self) -> None:
        for w in self._works:
            w.wait()
        self._works, self._recv, self._keep = [], {}, []


def check_shards(g: Group, q, k, v, scale, layout: str, what: str) -> tuple[int, float | None]:
    """Check this rank's q, k, v [B, H/Hk, rows, D/Dv], share every rank's shapes
    (one small all-gather) and check they fit one sequence in `layout`; every rank
    raises the same InputError when some rank's do not. Returns the sequence length
    and the checked scale."""
    error = None
    try:
        scale = inputs.check_qkv(q, k, v, scale)
        mine = [1, q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2], v.shape[2], q.shape[3], v.shape[3],
                _DTYPES.index(q.dtype)]
    except InputError as e:
        error, mine = e, [0] * len(_FIELDS)
    device = q.device if isinstance(q, torch.Tensor) else torch.device("cpu")
    every = [torch.zeros(len(_FIELDS), dtype=torch.int64, device=device) for _ in range(g.world)]
    dist.all_gather(every, torch.tensor(mine, dtype=torch.int64, device=device), group=g.group)
    every = [dict(zip(_FIELDS, t.tolist())) for t in every]
    if error is not None:
        raise InputError(f"{what} on rank {g.rank}: {error}") from None
    bad = [r for r, m in enumerate(every) if not m["ok"]]
    if bad:
        raise InputError(f"{what}: the inputs of rank {bad[0]} are not valid (its error says why)")
    for name in ("batch", "heads", "kv heads", "head dim", "value head dim", "dtype"):
        for r, m in enumerate(every):
            if m[name] != every[0][name]:
                a, b = every[0][name], m[name]
                if name == "dtype":
                    a, b = _DTYPES[a], _DTYPES[b]
                raise InputError(f"{what}: every rank must pass the same {name}: rank 0 has {a}, rank {r} has {b}")
    for r, m in enumerate(every):
        if not m["query rows"] == m["key rows"] == m["value rows"]:
            raise InputError(f"{what}: rank {r} holds {m['query rows']} query rows but {m['key rows']} key rows: "
                             "q, k and v shards hold the same positions (self-attention over one sequence)")
    length = sum(m["query rows"] for m in every)
    expected = shard_ranges(length, g.world, layout)
    for r, m in enumerate(every):
        if m["query rows"] != ranges_size(expected[r]):
            sizes = [m["query rows"] for m in every]
            raise InputError(f"{what}: the shards {sizes} do not split one sequence in layout {layout!r}: a sequence "
                             f"of {length} over {g.world} ranks gives rank {r} {ranges_size(expected[r])} rows, not "
                             f"{m['query rows']} (sparsedsl.distributed.shard cuts them)")
    return length, scale
