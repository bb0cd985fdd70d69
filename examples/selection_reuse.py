"""Reusing a top-k selection across layers (TidalDecode) and across decoding steps (Recycled
Attention).

Every layer of a toy model holds a KV cache of noise with the same planted "needle" blocks
(the tokens all layers attend to, the premise of both papers), and each layer's new query
looks for them. Three ways to decode one token through the layers:

- own:      every layer scores the blocks itself (the selection kernel reads its summaries);
- tidal:    only the selection layers (0 and the middle one) score; the others reuse the
            last selection (`decode(..., return_selection=True)` then `selection=`);
- recycled: decoding several steps, the selection of step 0 serves the next steps too.

Prints, for each way, how many selections were computed and the mean error of the
outputs against dense attention, and whether the reused blocks still hold every needle:

    python examples/selection_reuse.py                      # CUDA, 32K cached tokens
    python examples/selection_reuse.py --device cpu --length 2048
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import sparsedsl  # noqa: E402

PATTERN = "pattern retrieval() { causal & (sink(16) | window(64) | topk(8, block=64)) }"


def make_layers(layers, length, heads, dim, needles, device, seed=0):
    """Per layer (q, k_cache, v_cache): noise, with needle blocks matching the query's direction."""
    g = torch.Generator().manual_seed(seed)
    blocks = [int(length * f) // 64 for f in torch.linspace(0.1, 0.7, needles).tolist()]
    out = []
    for _ in range(layers):
        direction = torch.randn(1, heads, 1, dim, generator=g)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        q = 8.0 * direction + 0.1 * torch.randn(1, heads, 1, dim, generator=g)
        k = torch.randn(1, heads, length, dim, generator=g)
        v = 0.1 * torch.randn(1, heads, length, dim, generator=g)
        for j in blocks:
            k[:, :, j * 64:(j + 1) * 64] = 8.0 * direction + 0.3 * torch.randn(1, heads, 64, dim, generator=g)
            v[:, :, j * 64:(j + 1) * 64] = 1.0
        out.append(tuple(t.to(device) for t in (q, k, v)))
    return out, blocks


def dense(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=32768)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    p = sparsedsl.compile_pattern(PATTERN)
    layers, needles = make_layers(args.layers, args.length, args.heads, 64, 3, args.device)
    lens = torch.tensor([args.length], dtype=torch.int32, device=args.device)
    errors, selections, found = {}, {}, {}

    def run(way):
        err, chosen, sel, hits = [], 0, None, True
        for i, (q, k, v) in enumerate(layers):
            if way == "own" or (way == "tidal" and i in (0, len(layers) // 2)) or sel is None:
                out, sel = p.decode(q, k, v, lens, return_selection=True)
                chosen += 1
            else:
                out = p.decode(q, k, v, lens, selection=sel)
            hits &= all(j in sel[0, h, 0].tolist() for h in range(q.shape[1]) for j in needles)
            err.append((out - dense(q, k, v)).abs().mean().item())
        return sum(err) / len(err), chosen, hits

    for way in ("own", "tidal"):
        errors[way], selections[way], found[way] = run(way)
    # Recycled Attention on layer 0: the selection of step 0 serves the next steps (one more key each)
    q, k, v = layers[0]
    sel, err = None, []
    for step in range(args.steps):
        n = torch.tensor([args.length - args.steps + 1 + step], dtype=torch.int32, device=args.device)
        if sel is None:
            out, sel = p.decode(q, k, v, n, return_selection=True)
        else:
            out = p.decode(q, k, v, n, selection=sel)
        err.append((out - dense(q, k[:, :, :int(n)], v[:, :, :int(n)])).abs().mean().item())
    errors["recycled"], selections["recycled"] = sum(err) / len(err), 1
    found["recycled"] = all(j in sel[0, h, 0].tolist() for h in range(q.shape[1]) for j in needles)
    print(f"L={args.length}, {args.layers} layers, needles in blocks {needles}")
    for way in errors:
        print(f"{way:9s} selections computed: {selections[way]:2d}   mean error vs dense: {errors[way]:.4f}   "
              f"needles in the selection: {found[way]}")
    return errors, selections, found


if __name__ == "__main__":
    main()
