"""Where a decode step's time goes: the CUDA kernels of one top-k (or streaming)
decode step under torch.profiler, heaviest first.

    python benchmarks/profile_decode.py [--length 1048576] [--pattern topk|stream]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402
from bench_dynamic import STREAM, TOPK  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=1 << 20)
    ap.add_argument("--pattern", choices=("topk", "stream"), default="topk")
    args = ap.parse_args(argv)
    b, h, hk, d, L = 8, 32, 8, 128, args.length
    g = torch.Generator(device="cuda").manual_seed(0)
    kc = torch.randn(b, hk, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
    vc = torch.randn(b, hk, L, d, device="cuda", dtype=torch.bfloat16, generator=g)
    q = torch.randn(b, h, 1, d, device="cuda", dtype=torch.bfloat16, generator=g)
    lens = torch.full((b,), L, dtype=torch.int32, device="cuda")
    p = sparsedsl.compile_pattern(TOPK if args.pattern == "topk" else STREAM)
    summ = p.summarize(kc, vc, lens) if p.is_dynamic else None
    for _ in range(3):
        p.decode(q, kc, vc, lens, summaries=summ)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            p.decode(q, kc, vc, lens, summaries=summ)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
