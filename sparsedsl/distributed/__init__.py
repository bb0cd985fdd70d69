"""Context parallelism: one sequence split over the ranks of a torch.distributed
process group (docs/distributed.md).

    exchange_plan(p, L, world, layout)       which keys each rank needs from each other rank
    shard(x, rank, world, layout), unshard   cut a whole-sequence tensor into shards and back
"""
from .exchange import ExchangePlan, exchange_plan
from .layout import LAYOUTS, shard, shard_ranges, unshard

__all__ = ["exchange_plan", "ExchangePlan", "LAYOUTS", "shard", "shard_ranges", "unshard"]
