"""Time every tile config of the forward kernel on a few patterns (diagnosing autotune choices)."""
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402
from sparsedsl.kernels.generate import GPU_CONFIGS  # noqa: E402

CASES = [("sink128+window1024", "patterns/streaming_llm.attn", dict(sink=128, window=1024)),
         ("dilated(1024,4)", "pattern d() { dilated(1024, 4) }", {}),
         ("longformer", "patterns/longformer.attn", dict(pattern="longformer", window=512, num_global=64)),
         ("causal", "pattern c() { causal }", {})]
L, H, D = 16384, 16, 128
for name, src, kw in CASES:
    p = sparsedsl.compile_pattern(src, **kw)
    q, k, v = (torch.randn(1, H, L, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    times = []
    for cfg in GPU_CONFIGS:
        fn = lambda: p(q, k, v, _config=cfg)  # noqa: E731
        fn()
        times.append(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    tuned = triton.testing.do_bench(lambda: p(q, k, v), warmup=25, rep=100, return_mode="median")
    print(f"{name:22s} autotuned {tuned:.3f} ms | " + " ".join(f"{c}:{t:.3f}" for c, t in zip(GPU_CONFIGS, times)),
          flush=True)
