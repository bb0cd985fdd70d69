"""Context parallelism: one sequence split over the ranks of a torch.distributed
process group (docs/distributed.md).

    attention(p, q, k, v, group=, layout=)   each rank's queries over the whole sequence
    decode(p, q, k_cache, v_cache, ...)      decoding over a KV cache split across the ranks
    exchange_plan(p, L, world, layout)       which keys each rank needs from each other rank
    report(p, L, world, layout, ...)         each rank's work and received bytes, before running
    shard(x, rank, world, layout), unshard   cut a whole-sequence tensor into shards and back
    partial_attention, partial_grads, merge  the local compute: queries over keys at global positions
"""
from .attention import attention
from .decode import decode
from .exchange import ExchangePlan, exchange_plan
from .layout import LAYOUTS, shard, shard_ranges, unshard
from .partial import merge, partial_attention, partial_grads
from .report import Report, report

__all__ = ["attention", "decode", "exchange_plan", "ExchangePlan", "LAYOUTS", "shard", "shard_ranges", "unshard",
           "partial_attention", "partial_grads", "merge", "report", "Report"]
