"""What the non-finite guard costs: the forward (prefill and decoding) with the guard
kernel launched after it, as shipped, and with that launch left out (which is wrong
only when V holds a NaN or an infinity). CUDA only; prints one line per case."""
from __future__ import annotations

import argparse

import torch
import triton

import sparsedsl
from sparsedsl.kernels import launch


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--length", type=int, default=16384)
    args = ap.parse_args(argv)
    p = sparsedsl.compile_pattern("pattern p() { causal & (sink(128) | window(1024)) }")
    L, dt = args.length, torch.bfloat16
    q, k, v = (torch.randn(1, 16, L, 128, device="cuda", dtype=dt) for _ in range(3))
    qd = torch.randn(8, 32, 1, 128, device="cuda", dtype=dt)
    kc, vc = (torch.randn(8, 8, L, 128, device="cuda", dtype=dt) for _ in range(2))
    lens = torch.full((8,), L, device="cuda", dtype=torch.int32)
    cases = {"prefill 1x16xL": lambda: p(q, k, v, backend="triton"),
             "decode 8x32 (Hk=8) cache L": lambda: p.decode(qd, kc, vc, lens, backend="triton")}
    shipped = launch._Launch.run

    def unguarded(self, *a, guard=None, **kw):
        return shipped(self, *a, **kw)

    def timed(fn):
        # GPU time only: the call captured in a CUDA graph, the replay timed (and the eager call)
        fn()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        replay = triton.testing.do_bench(graph.replay, warmup=25, rep=200, return_mode="median")
        return replay, triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    for name, fn in cases.items():
        on, on_eager = timed(fn)
        launch._Launch.run = unguarded
        off, off_eager = timed(fn)
        launch._Launch.run = shipped
        print(f"guard L={L} {name}: graph replay with guard {on * 1e3:.1f} us, without {off * 1e3:.1f} us "
              f"(+{(on - off) * 1e3:.1f} us, {100 * (on / off - 1):.1f}%); eager {on_eager * 1e3:.1f} vs "
              f"{off_eager * 1e3:.1f} us")


if __name__ == "__main__":
    main()
