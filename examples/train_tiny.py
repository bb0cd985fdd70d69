"""Train a tiny causal language model whose attention is a sparsedsl pattern.

The same model is trained twice, from the same initial weights on the same
batches:

    sparsedsl   attention is the compiled pattern, called as  p(q, k, v)
    dense SDPA  attention is torch's scaled_dot_product_attention given the
                pattern's dense boolean mask,  p.mask(L, L, num_heads=H)

Both compute exact attention under the same mask, so the two loss curves agree
up to floating-point rounding. On CPU, p(q, k, v) runs sparsedsl's pure-PyTorch
reference (differentiable through autograd); on CUDA it runs the generated
Triton kernels where they exist. Either way the backward pass is ordinary
`loss.backward()`. In float32 the curves agree to a few ulps; under bfloat16
autocast less closely, since the two attentions round differently.

The task is copying: n random tokens, a separator, and the same n tokens
again. The loss (and the accuracy) is on the second copy only, where the token
to predict sits exactly n positions back, so the pattern must let a query see
n positions back. The default pattern, StreamingLLM's `sink(4) | window(w)`
under `causal`, gets the smallest window that does (w = n + 1). With a window
that is too small only the answers inside the 4 sinks can be copied (try
-p window=8: about 18% accuracy, where 4/32 + 28/32 * chance = 18.3%).

    python examples/train_tiny.py                           # CPU: about 30 s
    python examples/train_tiny.py --device cuda --dtype bfloat16 --steps 1000
    python examples/train_tiny.py -p sink=1 -p window=40 --seq-len 64
    python examples/train_tiny.py --pattern patterns/s2_attention.attn --name s2_attention \\
        -p block=8 -p local=2 -p stride=4
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import sparsedsl

DEFAULT_PATTERN = "patterns/streaming_llm.attn"
VOCAB = 16                 # 15 data tokens and the separator


# ---------------------------------------------------------------------------
# The model: a pre-LN transformer in plain torch. The attention function is an
# argument of forward(), so one set of weights can run with either attention.
# ---------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x, attend):
        b, length, d = x.shape
        # [B, L, 3 * d] -> three tensors [B, H, L, head_dim], the layout sparsedsl and SDPA take
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = attend(q, k, v)                                     # [B, H, L, head_dim]
        x = x + self.proj(y.transpose(1, 2).reshape(b, length, d))
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab: int, max_len: int, d_model: int = 64, n_heads: int = 4, n_layers: int = 2):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(max_len, d_model)            # learned absolute positions
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens, attend):
        x = self.tok(tokens) + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.ln_f(x))                        # logits [B, L, vocab]


# ---------------------------------------------------------------------------
# The task: copy n tokens. Input x[0 : 2n], target x[1 : 2n + 1] of
#     t_1 ... t_n  SEP  t_1 ... t_n
# scored on the last n targets (the second copy), each n positions back.
# ---------------------------------------------------------------------------

def copy_batch(batch: int, seq_len: int, vocab: int, gen: torch.Generator):
    n = seq_len // 2
    sep = vocab - 1                                             # the last token id is the separator
    t = torch.randint(0, vocab - 1, (batch, n), generator=gen)
    x = torch.cat([t, torch.full((batch, 1), sep), t], dim=1)   # [B, 2n + 1]
    return x[:, :-1], x[:, 1:]                                  # inputs, targets (score the last n)


def default_params(path: str, seq_len: int) -> dict:
    """Parameters for the default pattern: 4 sinks and the smallest window that
    reaches the copy distance n = seq_len // 2 (the query itself counts in it).
    Other patterns start from their own defaults."""
    return {"sink": 4, "window": seq_len // 2 + 1} if path == DEFAULT_PATTERN else {}


class Result(NamedTuple):
    sparse_loss: list      # training loss per step, sparsedsl attention
    dense_loss: list       # training loss per step, SDPA with the dense mask
    sparse_acc: float      # accuracy on the second copy of a held-out batch
    dense_acc: float
    seconds: float         # wall time of the whole run
    step_seconds: tuple    # (sparsedsl, dense SDPA): time in training steps, forward + backward + update


def train(steps: int = 300, seq_len: int = 64, *, pattern: str = DEFAULT_PATTERN, name: str | None = None,
          params: dict | None = None, device: str = "cpu", dtype: torch.dtype = torch.float32,
          batch_size: int = 32, vocab: int = VOCAB, d_model: int = 64, n_heads: int = 4, n_layers: int = 2,
          lr: float = 3e-3, seed: int = 0, every: int = 25, quiet: bool = False) -> Result:
    """Train the sparsedsl model and the dense-SDPA model side by side; see the module docstring."""
    start = time.perf_counter()
    say = (lambda *a, **kw: None) if quiet else print
    seq_len -= seq_len % 2                                      # the task needs an even length
    params = {**default_params(pattern, seq_len), **(params or {})}     # -p overrides the defaults

    # 1. Compile the pattern once; it serves every length and head count.
    p = sparsedsl.compile_pattern(pattern, pattern=name, **params)
    if p.is_dynamic:
        raise SystemExit(f"{p.name}: topk/landmarks patterns depend on q and k, so no single dense mask "
                         "can be the baseline; pick a static pattern")

    # 2. The baseline's mask, computed once: bool [H, L, L], True = visible.
    mask = p.mask(seq_len, seq_len, num_heads=n_heads).to(device)
    if (mask & ~torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()).any():
        print(f"warning: {p.name} lets queries see later tokens: a causal LM can read its answers", file=sys.stderr)
    if not mask.any(-1).all():
        print(f"warning: {p.name} leaves some queries with no key (sparsedsl gives 0 there, SDPA NaN)", file=sys.stderr)
    n = seq_len // 2
    # the answer to query n + i is the input token at i: does any head see it?
    reach = mask[:, torch.arange(n, seq_len), torch.arange(0, n)].any(0).float().mean().item()

    def sparse_attend(q, k, v):
        return p(q, k, v)

    def dense_attend(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    # 3. Two copies of one randomly initialised model, one optimizer each.
    torch.manual_seed(seed)
    sparse_model = TinyLM(vocab, seq_len, d_model, n_heads, n_layers).to(device)
    dense_model = copy.deepcopy(sparse_model)
    runs = [(sparse_model, sparse_attend, torch.optim.AdamW(sparse_model.parameters(), lr=lr)),
            (dense_model, dense_attend, torch.optim.AdamW(dense_model.parameters(), lr=lr))]
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)

    say(p.ir(), end="")
    say(f"# L={seq_len} H={n_heads} head_dim={d_model // n_heads} density {p.density(seq_len, num_heads=n_heads):.3f}; "
        f"copy distance {n}: {reach:.0%} of the answers in a query's view; {device} {str(dtype)[6:]}")
    say(f"{'step':>6} {'sparsedsl':>10} {'dense SDPA':>10} {'|diff|':>9}")

    # 4. The training loop: the same batch goes to both models.
    gen = torch.Generator().manual_seed(seed + 1)
    losses, clock = ([], []), [0.0, 0.0]
    for step in range(1, steps + 1):
        x, y = copy_batch(batch_size, seq_len, vocab, gen)
        x, y = x.to(device), y.to(device)
        for i, (model, attend, opt) in enumerate(runs):
            t0 = time.perf_counter()
            with autocast:
                logits = model(x, attend)
            loss = F.cross_entropy(logits[:, -n:].float().reshape(-1, vocab), y[:, -n:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()                  # through p(q, k, v) like any other torch op
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses[i].append(loss.item())   # .item() waits for the GPU, so the clock is honest
            clock[i] += time.perf_counter() - t0
        if step % every == 0 or step == 1 or step == steps:
            a, b = losses[0][-1], losses[1][-1]
            say(f"{step:>6} {a:>10.4f} {b:>10.4f} {abs(a - b):>9.2e}")

    # 5. Accuracy on a held-out batch: the fraction of second-copy tokens predicted right.
    x, y = copy_batch(256, seq_len, vocab, torch.Generator().manual_seed(seed + 2))
    x, y = x.to(device), y.to(device)
    accs = []
    with torch.no_grad(), autocast:
        for model, attend, _ in runs:
            accs.append((model(x, attend)[:, -n:].argmax(-1) == y[:, -n:]).float().mean().item())
    return Result(losses[0], losses[1], accs[0], accs[1], time.perf_counter() - start, tuple(clock))


def parse_param(item: str):
    """-p NAME=VALUE, as the sparsedsl command line reads it: true/false or an integer."""
    name, sep, value = item.partition("=")
    if not sep or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    low = value.strip().lower()
    if low in ("true", "false"):
        return name, low == "true"
    try:
        return name, int(value.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: expected an integer or true/false, got {value!r}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seq-len", type=int, default=64, help="model input length (even; the copy distance is half)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 runs the model under autocast (meant for cuda)")
    ap.add_argument("--pattern", default=DEFAULT_PATTERN, metavar="FILE",
                    help="a .attn file or a shipped pattern name (default: %(default)s)")
    ap.add_argument("--name", default=None, help="which pattern of FILE, when it defines several")
    ap.add_argument("-p", "--param", type=parse_param, action="append", default=None, metavar="NAME=VALUE",
                    help="bind a pattern parameter (repeatable); default pattern: sink=4, window=seq_len/2+1")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=25, help="print the losses every N steps")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.seq_len < 2:
        ap.error("--steps must be at least 1 and --seq-len at least 2")
    if args.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # The tensors are tiny: one thread is as fast as several, and it does not
        # slow to a crawl (10x measured) when other processes share the cores.
        torch.set_num_threads(1)

    try:
        r = train(args.steps, args.seq_len, pattern=args.pattern, name=args.name,
                  params=dict(args.param) if args.param else None, device=args.device,
                  dtype=getattr(torch, args.dtype), batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  every=args.every, quiet=args.quiet)
    except sparsedsl.SparseDSLError as e:
        print(e, file=sys.stderr)
        return 1
    gap = max(abs(a - b) for a, b in zip(r.sparse_loss, r.dense_loss))
    print(f"loss: sparsedsl {r.sparse_loss[0]:.4f} -> {r.sparse_loss[-1]:.4f}, "
          f"dense SDPA {r.dense_loss[0]:.4f} -> {r.dense_loss[-1]:.4f}; max |difference| {gap:.2e}")
    print(f"copy accuracy: sparsedsl {r.sparse_acc:.1%}, dense SDPA {r.dense_acc:.1%} "
          f"(chance {1 / (VOCAB - 1):.1%})")
    print(f"time: {r.seconds:.1f} s in all; training steps {r.step_seconds[0]:.1f} s sparsedsl, "
          f"{r.step_seconds[1]:.1f} s dense SDPA" + (" (on CPU sparsedsl runs its reference: not a benchmark)"
                                                     if args.device == "cpu" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
