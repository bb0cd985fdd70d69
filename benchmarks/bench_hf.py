"""Hugging Face transformers end to end: prefill time, decoding tokens/s and peak memory of a
Llama-like model built from a config (no download), with StreamingLLM or DuoAttention patterns
through sparsedsl.integrations.transformers against attn_implementation="sdpa" and
"flex_attention", in one process.

    python benchmarks/bench_hf.py [--lengths 32768 65536 131072] [--new-tokens 64] [--out hf.md]

Prefill: one forward of the whole prompt with use_cache=True and the last position's logits
(what generate() does first),
median of a few runs. Decoding: generate() of --new-tokens greedy tokens after that prefill,
minus the prefill, as tokens per second (batch 1). Peak memory: torch.cuda.max_memory_allocated
over the prefill. The model is random (so tokens differ between implementations once a
pattern hides context); only speed and memory are compared.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402
from sparsedsl.integrations import transformers as sdt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[32768, 65536, 131072])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--sink", type=int, default=128)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--impls", nargs="+", default=["sparsedsl-streaming", "sparsedsl-duo", "sdpa", "flex_attention"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    return ap.parse_args(argv)


def build(args, impl: str, device, dtype):
    """A random Llama-like model with `impl`'s attention."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.kv_heads, max_position_embeddings=max(args.lengths) + 4096,
                         attn_implementation="sdpa" if impl.startswith("sparsedsl") else impl)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    if impl.startswith("sparsedsl"):
        streaming = sparsedsl.compile_pattern(ROOT / "patterns" / "streaming_llm.attn", sink=args.sink,
                                              window=args.window)
        # DuoAttention-like: half the layers keep full causal attention (None), half stream
        patterns = streaming if impl == "sparsedsl-streaming" else (
            lambda i: None if i < args.layers // 2 else streaming)
        sdt.apply(model, patterns)
    return model


def timed(fn, sync, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def measure(model, L: int, new_tokens: int, device, repeats: int) -> dict:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    prompt = torch.randint(1, model.config.vocab_size, (1, L), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        model(prompt[:, :256], use_cache=True, logits_to_keep=1)  # compile / autotune outside the timed region
        model.generate(prompt[:, :256], max_new_tokens=2, do_sample=False, pad_token_id=0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        prefill = timed(lambda: model(prompt, use_cache=True, logits_to_keep=1), sync, repeats)
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
        # decoding: generate(n) - generate(1), so that generate's own prefill (its mask, its logits) cancels
        first, total = (timed(lambda n=n: model.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                                          pad_token_id=0), sync, 1) for n in (1, new_tokens))
    decode = max(total - first, 1e-9)
    return dict(prefill_ms=prefill * 1e3, tok_s=(new_tokens - 1) / decode, peak_gib=peak)


def format_table(rows, args, versions: str) -> str:
    lines = [f"Hugging Face Llama-like model from a config ({args.layers} layers, hidden {args.hidden}, "
             f"{args.heads} heads, {args.kv_heads} KV heads, bf16, batch 1) — {versions}. StreamingLLM: "
             f"sink {args.sink} + window {args.window} on every layer; DuoAttention-like: the same on half the "
             f"layers, full causal on the others. Decoding: {args.new_tokens} greedy tokens after the prefill.",
             "",
             "| L | attention | prefill ms | decode tokens/s | peak GiB (prefill) |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['L'] // 1024}K | {r['impl']} | {r['error']} | | |")
        else:
            lines.append(f"| {r['L'] // 1024}K | {r['impl']} | {r['prefill_ms']:.1f} | {r['tok_s']:.1f} | "
                         f"{r['peak_gib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    import transformers
    import triton

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    versions = (f"{name}, torch {torch.__version__}, triton {triton.__version__}, "
                f"transformers {transformers.__version__}")
    rows = []
    for impl in args.impls:
        model = build(args, impl, device, dtype)
        for L in args.lengths:
            try:
                r = measure(model, L, args.new_tokens, device, args.repeats)
            except Exception as e:  # an implementation failing (memory, a missing backend) leaves its row
                r = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")
            rows.append(dict(L=L, impl=impl, **r))
            print(rows[-1], flush=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del model
    text = format_table(rows, args, versions)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return rows


if __name__ == "__main__":
    main()
