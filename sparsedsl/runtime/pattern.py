"""CompiledPattern: what compile_pattern returns, and the public API on it."""
from __future__ import annotations

import math

import torch

from ..atoms.dynamic import AttentionScore
from ..errors import InputError
from ..ir import nodes as ir
from ..ir.check import dynamic_atoms
from ..ir.graph import to_graph
from ..ir.plan import KernelPlan
from ..ir.printer import to_text
from ..ir.topk import num_groups, padded_groups
from ..passes.dynamic import decode_topk
from ..reference.attention import compute_selection, reference_attention, visible
from ..reference.select import select_given
from ..ir.head_args import check_heads as check_head_args
from . import inputs
from .sinks import check_sinks, with_sinks
from .ops import attention, pattern_key, plan_for, select

BACKENDS = ("auto", "reference", "triton")


_CALL_KEYWORDS = ("scale (softmax_scale), return_lse, backend, selection, cu_seqlens_q, cu_seqlens_k, "
                  "max_seqlen_q, max_seqlen_k, q_lengths, kv_lengths, padding_side, layout, sinks")
_DECODE_KEYWORDS = ("block_table, cache_leftpad, summaries, scale (softmax_scale), return_lse, num_splits, backend, "
                    "sinks, layout")


class CompiledPattern:
    """A pattern instantiated with its parameters; immutable and reusable for
    every sequence length and head count."""

    def __init__(self, root: ir.Pattern, params: dict, spans: dict):
        self.root = root
        self.params = dict(params)
        self._spans = spans
        self._checked: set[tuple[int, int]] = set()
        self._plan: KernelPlan | None = None
        self.dynamic_atoms = tuple(dynamic_atoms(root))
        # registered now, not in __call__: under torch.compile the call is traced, and a
        # traced registration would only take effect after the graph that needs it has run
        self._op_key = pattern_key(root)

    # -- description -------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def is_dynamic(self) -> bool:
        """True when the pattern depends on the data (landmarks, topk or compensation)."""
        return bool(self.dynamic_atoms)

    def ir(self) -> str:
        """The IR as .attn text (parameters bound); it parses back to the same IR."""
        return to_text(self.root)

    def graph(self):
        """The IR as a networkx DiGraph (shared sub-patterns are one node)."""
        return to_graph(self.root)

    @property
    def plan(self) -> KernelPlan:
        """The kernel plan (ir/plan.py) the generated kernels are built from: the last
        step of the compile pipeline (the optimizer, then the lowering), run on first
        use and kept. InputError when the pattern has no generated kernels."""
        if self._plan is None:
            self._plan = plan_for(self.root)
        return self._plan

    def __repr__(self) -> str:
        return f"<CompiledPattern {self.name}: {to_text(self.root.body) if not isinstance(self.root.body, ir.Heads) else 'per-head'}>"

    # -- static structure --------------------------------------------------------------

    def check(self, num_heads: int = 1, num_kv_heads: int | None = None) -> None:
        """Raise PatternError if the pattern is invalid for this head count (an
        uncovered head, an argument out of range or a zero divisor for some head)."""
        self._heads(num_heads, num_kv_heads)

    def _heads(self, num_heads, num_kv_heads) -> tuple[int, int]:
        h, hk = inputs.check_heads(num_heads, num_kv_heads)
        if (h, hk) not in self._checked:
            check_head_args(self.root, h, hk, self._spans)
            self._checked.add((h, hk))
        return h, hk

    def _lengths(self, q_len, kv_len) -> tuple[int, int]:
        q_len = inputs.check_size("q_len", q_len)
        kv_len = q_len if kv_len is None else inputs.check_size("kv_len", kv_len)
        return q_len, kv_len

    def _static_only(self, what: str) -> None:
        if self.is_dynamic:
            kinds = ", ".join(sorted({a.kind for a in self.dynamic_atoms}))
            raise InputError(f"{what}: pattern {self.name!r} depends on the data ({kinds}); "
                             "pass q= and k= to mask(), or use select_blocks(q, k)")

    def cost(self, q_len, kv_len=None, num_heads=1, num_kv_heads=None, *, tile=(128, 128), head_dim=128):
        """The forward kernel's static cost for this shape (runtime/cost.py CostReport):
        summed over heads, `visited` key tiles, of them `full` (no element mask) and
        `partial`, `needed` (tiles holding a visible pair), `ratio` = visited / needed
        and `flops`; the same per head in `per_head`. Static patterns only."""
        from .cost import pattern_cost

        self._static_only("cost")
        q_len, kv_len = self._lengths(q_len, kv_len)
        h, hk = self._heads(num_heads, num_kv_heads)
        try:
            bm, bn = (inputs.check_size("tile", int(t), 1) for t in tile)
        except (TypeError, ValueError):
            raise InputError(f"cost: tile must be two positive integers (BLOCK_M, BLOCK_N), got {tile!r}") from None
        return pattern_cost(self.root, self.plan, q_len, kv_len, h, hk, (bm, bn),
                            inputs.check_size("head_dim", head_dim, 1))

    def bounds_warnings(self, q_len=2048, num_heads=1, num_kv_heads=None, tile=(128, 64)) -> list[str]:
        """Lines naming the parts of the pattern that make the kernel visit more than 1.5x
        the key tiles it needs at this shape (no closed-form bounds), with file:line:col."""
        from .cost import RATIO_WARNING, responsible

        if self.is_dynamic:
            return []
        parts = responsible(self.root)
        if not parts:
            return []
        rep = self.cost(q_len, num_heads=num_heads, num_kv_heads=num_kv_heads, tile=tile)
        if rep.ratio <= RATIO_WARNING:
            return []
        out = []
        for n in parts:
            span = self._spans.get(n)
            where = f"{span}: " if span is not None else ""
            what = "a complement" if isinstance(n, ir.Compl) else f"`{to_text(n)}`"
            out.append(f"{where}warning: pattern {self.name!r} visits {rep.ratio:.1f}x the key tiles it needs "
                       f"(L={q_len}, tile {tile[0]}x{tile[1]}): {what} has no closed-form bounds, so every tile "
                       "the rest of the pattern allows is visited and masked (docs/language.md, where)")
        return out

    def _row_chunks(self, q_len, kv_len, num_heads, batch=1, device=None):
        step = max(1, (1 << 24) // max(1, batch * num_heads * max(kv_len, 1)))
        for r0 in range(0, q_len, step):
            yield torch.arange(r0, min(q_len, r0 + step), device=device)

    def mask(self, q_len, kv_len=None, num_heads=1, num_kv_heads=None, *, q=None, k=None, scores=None,
             threshold=None) -> torch.Tensor:
        """Visibility of every (query, key) pair: bool [num_heads, q_len, kv_len].

        A dynamic pattern needs q [B, H, Lq, D] and k [B, Hk, Lk, D] and returns
        [B, H, Lq, Lk] (ordinary keys only; landmark entries are not keys); one with
        topk(score=given) also the gate's `scores` (and `threshold`), as a call takes them."""
        q_len, kv_len = self._lengths(q_len, kv_len)
        h, hk = self._heads(num_heads, num_kv_heads)
        selection, batch = None, None
        if q is not None or k is not None:
            if q is None or k is None:
                raise InputError("mask: pass both q and k, or neither")
            inputs.check_qk(q, k, "mask")
            if tuple(q.shape[1:3]) != (h, q_len) or tuple(k.shape[1:3]) != (hk, kv_len):
                raise InputError(f"mask: q must be [B, {h}, {q_len}, D] and k [B, {hk}, {kv_len}, D], got "
                                 f"{tuple(q.shape)} and {tuple(k.shape)}")
            batch = q.shape[0]
            given = self._given_selection(scores, threshold, None, h, (batch, kv_len, q_len, kv_len, None))
            selection = compute_selection(self.root, q, k, clamp=True) if given is None else \
                self._selection_dict(given, q, k)
        else:
            if scores is not None or threshold is not None:
                raise InputError("mask: scores= and threshold= come with q and k")
            self._static_only("mask")
        shape = (h, q_len, kv_len) if batch is None else (batch, h, q_len, kv_len)
        out = torch.empty(shape, dtype=torch.bool)
        for rows in self._row_chunks(q_len, kv_len, h, batch or 1):
            m = visible(self.root, q_len, kv_len, h, hk, rows, selection).cpu()
            m = m.expand(batch or 1, h, len(rows), kv_len)
            if batch is None:
                out[:, rows[0]:rows[-1] + 1] = m[0]
            else:
                out[:, :, rows[0]:rows[-1] + 1] = m
        return out

    def block_layout(self, q_len, kv_len=None, block=128, num_heads=1, num_kv_heads=None) -> torch.Tensor:
        """int8 [num_heads, q_blocks, kv_blocks]: 0 empty, 1 partial, 2 full.

        A block is classified over the (query, key) pairs inside the sequence
        (the last block of each axis may be shorter than `block`)."""
        q_len, kv_len = self._lengths(q_len, kv_len)
        block = inputs.check_size("block", block, 1)
        h, hk = self._heads(num_heads, num_kv_heads)
        self._static_only("block_layout")
        nq, nk = -(-q_len // block), -(-kv_len // block)
        out = torch.zeros((h, nq, nk), dtype=torch.int8)
        if nq == 0 or nk == 0:
            return out
        kpad = nk * block - kv_len
        rows_per = max(block, ((1 << 24) // max(1, h * max(kv_len, 1))) // block * block)
        for r0 in range(0, q_len, rows_per):
            rows = torch.arange(r0, min(q_len, r0 + rows_per))
            m = visible(self.root, q_len, kv_len, h, hk, rows).cpu().expand(1, h, len(rows), kv_len)[0]
            c = len(rows)
            qpad = -c % block
            # Padding pairs count as visible for "all" and invisible for "any".
            vis = torch.nn.functional.pad(m, (0, kpad, 0, qpad), value=False).view(h, -1, block, nk, block)
            pad_true = torch.ones((h, c, kv_len), dtype=torch.bool)
            inside = torch.nn.functional.pad(pad_true, (0, kpad, 0, qpad), value=False).view(h, -1, block, nk, block)
            any_ = vis.any(dim=(2, 4))
            all_ = (vis | ~inside).all(dim=(2, 4))
            b0 = r0 // block
            out[:, b0:b0 + any_.shape[1]] = torch.where(all_ & any_, 2, any_.to(torch.int8)).to(torch.int8)
        return out

    def density(self, q_len, kv_len=None, num_heads=1, num_kv_heads=None, *, device=None) -> float:
        """The fraction of (head, query, key) pairs that are visible (evaluated on
        `device`, e.g. "cuda" for long sequences)."""
        q_len, kv_len = self._lengths(q_len, kv_len)
        h, hk = self._heads(num_heads, num_kv_heads)
        self._static_only("density")
        if q_len == 0 or kv_len == 0:
            return 0.0
        total = 0
        for rows in self._row_chunks(q_len, kv_len, h, device=device):
            m = visible(self.root, q_len, kv_len, h, hk, rows)
            total += int(m.expand(1, h, len(rows), kv_len).sum())
        return total / (h * q_len * kv_len)

    # -- FlexAttention interop ---------------------------------------------------------

    def to_flex_mask_mod(self, q_len, kv_len=None, num_heads=1, num_kv_heads=None):
        """A FlexAttention mask_mod(b, h, q_idx, kv_idx) for calls of this shape."""
        q_len, kv_len = self._lengths(q_len, kv_len)
        h, hk = self._heads(num_heads, num_kv_heads)
        self._static_only("to_flex_mask_mod")
        from .flex import mask_mod

        return mask_mod(self.root, q_len, kv_len, h, hk)

    def to_flex_block_mask(self, q_len, kv_len=None, num_heads=1, num_kv_heads=None, *, device=None,
                           block_size=128, compile=False):
        """FlexAttention's BlockMask for calls of this shape (FlexAttention builds it in O(L^2)),
        on `device` (a tensor's device, a name; default: CUDA when there is one, else the CPU)."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError("to_flex_block_mask: device='cuda' but this torch has no CUDA device; "
                             "pass device='cpu' (or the inputs' device)")
        q_len, kv_len = self._lengths(q_len, kv_len)
        h, hk = self._heads(num_heads, num_kv_heads)
        self._static_only("to_flex_block_mask")
        from .flex import block_mask

        return block_mask(self.root, q_len, kv_len, h, hk, device, block_size, compile)

    # -- data-dependent ----------------------------------------------------------------

    def select_blocks(self, q, k, *, backend="auto", q_lengths=None, kv_lengths=None, padding_side="right",
                      scale=None):
        """The key blocks each topk atom selects: int32 [B, H, R, n], ids ascending, -1 = empty.

        Row r is the absolute query block (Lk - Lq) // block + r. A tuple, in
        source order, when the pattern has several topk atoms. On the Triton
        backend (CUDA tensors under "auto") the selection kernel computes it on
        the device, without host synchronisation. A padded batch (q_lengths,
        kv_lengths, padding_side as in the call): entry b's row r is its own group
        (kv_lengths[b] - q_lengths[b]) // block + r, R = ceil((Lq - 1) / block) + 1 rows
        (the most any entry spans; the rest of an entry's rows select nothing). `scale`: the
        logit scale of topk(score=attention(...)) (default 1 / sqrt(D), as the call's)."""
        inputs.check_qk(q, k)
        scale = inputs.check_scale(scale)
        self._heads(q.shape[1], k.shape[1])
        rows = None
        if q_lengths is not None or kv_lengths is not None:
            rows = inputs.check_padded(q, k, q_lengths, kv_lengths, padding_side)
        elif padding_side != "right":
            raise InputError("padding_side without q_lengths or kv_lengths: pass the lengths of the padded batch")
        atoms = [a for a in self.dynamic_atoms if a.kind == "topk"]
        if not atoms:
            raise InputError(f"select_blocks: pattern {self.name!r} has no topk(...) atom")
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype != torch.float64):
            if len(atoms) > 1 or q.dtype == torch.float64:
                raise InputError("select_blocks on backend='triton' takes one topk atom and float16, bfloat16 "
                                 "or float32 inputs; use backend='reference'")
            self.plan  # (InputError when the pattern has no generated kernels)
            sel = select(q, k, self._op_key, *(rows or ()), scale=scale)  # [B, H, R, min(n, blocks)]
            n = decode_topk(atoms[0]).n
            if sel.shape[-1] < n:  # the reference's layout [B, H, R, n]: empty slots past the key blocks
                b, h, r = sel.shape[:3]
                if b * h * r * n > 1 << 31:
                    raise InputError(f"topk(n={n}): the selection layout [B, H, R, n] = [{b}, {h}, {r}, {n}] is "
                                     f"too large; there are only {sel.shape[-1]} key blocks, so every candidate is "
                                     "selected (mask(q=, k=) and attention take such an n)")
                sel = torch.nn.functional.pad(sel, (0, n - sel.shape[-1]), value=-1)
            return sel
        if rows is None:
            selection = compute_selection(self.root, q, k, scale=scale)
            out = tuple(selection[a] for a in atoms)
        else:
            out = self._padded_selection(q, k, atoms, *rows, scale=scale)
        return out[0] if len(out) == 1 else out

    def _padded_selection(self, q, k, atoms, q_rows, kv_rows, longest=None, scale=None) -> tuple:
        """The reference's selection of a padded batch, entry by entry, in the padded layout
        (rows for entries of at most `longest` queries, default the Lq axis)."""
        out = []
        longest = q.shape[2] if longest is None else longest
        for a in atoms:
            t = decode_topk(a)
            out.append(torch.full((q.shape[0], q.shape[1], padded_groups(longest, t.block), t.n), -1,
                                  dtype=torch.int32, device=q.device))
        for i, ((sq, nq), (sk, nk)) in enumerate(zip(q_rows.tolist(), kv_rows.tolist())):
            selection = compute_selection(self.root, q[i:i + 1, :, sq:sq + nq], k[i:i + 1, :, sk:sk + nk],
                                          scale=scale)
            for a, dst in zip(atoms, out):
                sel = selection[a]
                dst[i:i + 1, :, :sel.shape[2]] = sel
        return tuple(out)

    def __call__(self, q, k, v, *, scale=None, return_lse=False, backend="auto", selection=None,
                 cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, q_lengths=None,
                 kv_lengths=None, padding_side="right", layout="bhsd", sinks=None, return_selection=False,
                 scores=None, threshold=None, deterministic=True, _config=None, **keywords):
        """Attention under the pattern. q [B, H, Lq, D], k/v [B, Hk, Lk, D/Dv].

        Returns out [B, H, Lq, Dv] (q's dtype), and lse [B, H, Lq] (natural log,
        float32, float64 for float64 inputs) with return_lse=True. Differentiable
        in q, k and v (generated backward kernels on the Triton backend).

        A packed batch (cu_seqlens_q, cu_seqlens_k: int32 [S + 1] cumulative
        starts; max_seqlen_q/k: the longest sequences): q [Tq, H, D], k/v
        [Tk, Hk, D/Dv], out [Tq, H, Dv], lse [H, Tq]; positions restart at 0 in
        every sequence and the pattern applies within each sequence only. A dynamic
        pattern selects and summarises each sequence on its own; a given selection is
        [S, H, ceil((max_seqlen_q - 1) / block) + 1, n], rows from each sequence's first group.

        A padded batch (q_lengths, kv_lengths: int32 [B] on q's device; None = the whole axis):
        entry b's real queries are q_lengths[b] rows of the Lq axis and its real keys
        kv_lengths[b] rows of the Lk axis, at the start (padding_side="right") or the end
        ("left"). Each entry is a sequence of its own (positions from 0, its queries aligned
        to the end of its keys); padded rows give output 0 and LSE -inf and get zero
        gradients. No host synchronisation on the GPU. A dynamic pattern selects and
        summarises each entry on its own (its blocks from its first real key); a given
        selection has ceil((Lq - 1) / block) + 1 rows, each entry's from its own first group.

        layout="bshd": q [B, Lq, H, D], k/v [B, Lk, Hk, D/Dv] (FlashAttention's layout), read
        in place; out is [B, Lq, H, Dv] (a view), lse [B, H, Lq].

        sinks: learnable attention sinks (gpt-oss), a floating tensor [H] of logits, one per
        query head, that join every row's softmax denominator (no key, no value); the
        returned lse includes them, and they get their gradient.

        FlashAttention's and SDPA's keywords: `softmax_scale` is `scale`; `dropout_p=0`
        and `enable_gqa` are accepted; `is_causal`, `attn_mask`, `window_size`, ... raise
        an InputError that says what to write instead.

        return_selection=True (a pattern with one topk atom) appends the selection used, in
        the layout `selection=` takes for this kind of call: (out[, lse], selection), to be
        given to a later layer's call (TidalDecode, Recycled Attention).

        scores / threshold: for topk(..., score=given) (SeerAttention's gate): float block
        scores [B, H or Hk, R, ceil(Lk / block)] in the selection's row layout; each row takes
        its n best candidate blocks (ties to the lower block), only those scoring >= threshold
        when one is given; -inf and NaN never win. Selected on the device.

        deterministic (the Triton backend's backward): True (the default) computes every
        gradient element in one program, bitwise repeatable run to run; False lets a static
        pattern on a dense batch fuse dQ into the dK/dV kernel (FlashAttention-2/3's backward:
        float32 atomic adds, so dq may differ in its last bits between runs). Other calls
        ignore it."""
        if layout != "bhsd":
            q, k, v = inputs.from_layout(layout, q, k, v, packed=cu_seqlens_q is not None or cu_seqlens_k is not None)
            out = self(q, k, v, scale=scale, return_lse=return_lse, backend=backend, selection=selection,
                       q_lengths=q_lengths, kv_lengths=kv_lengths, padding_side=padding_side, sinks=sinks,
                       return_selection=return_selection, scores=scores, threshold=threshold,
                       deterministic=deterministic, _config=_config, **keywords)
            if not (return_lse or return_selection):
                return out.transpose(1, 2)
            return (out[0].transpose(1, 2), *out[1:])
        if return_selection and sum(a.kind == "topk" for a in self.dynamic_atoms) != 1:
            raise InputError(f"return_selection takes a pattern with one topk(...) atom; {self.name!r} has "
                             f"{sum(a.kind == 'topk' for a in self.dynamic_atoms)}")
        if keywords:
            scale = inputs.foreign_keywords(keywords, scale, inputs.heads_of(q, k), takes=_CALL_KEYWORDS)
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        packed = any(x is not None for x in (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k))
        padded = q_lengths is not None or kv_lengths is not None
        if padded and packed:
            raise InputError("q_lengths/kv_lengths describe a padded batch [B, H, L, D] and cu_seqlens a packed one "
                             "[T, H, D]: pass one or the other")
        if not padded and padding_side != "right":
            raise InputError("padding_side without q_lengths or kv_lengths: pass the lengths of the padded batch")
        rows = None  # per-entry rows: a padded batch's (q_rows, kv_rows), a packed one's (cu_q, cu_k, max_q, max_k)
        if packed:
            scale = inputs.check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
            self._heads(q.shape[1], k.shape[1])
            rows = (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        else:
            scale = inputs.check_qkv(q, k, v, scale)
            self._heads(q.shape[1], k.shape[1])
        if padded:
            rows = inputs.check_padded(q, k, q_lengths, kv_lengths, padding_side)
        if sinks is not None:
            check_sinks(sinks, q)
        entries = None  # (for scores=: entries, their keys' longest, each one's query and key counts, padded rows)
        if scores is not None and packed:
            cu_q, cu_k = cu_seqlens_q, cu_seqlens_k
            entries = (cu_q.numel() - 1, max_seqlen_k, cu_q[1:] - cu_q[:-1], cu_k[1:] - cu_k[:-1], max_seqlen_q)
        elif scores is not None:
            entries = (q.shape[0], k.shape[2], rows[0][:, 1], rows[1][:, 1], q.shape[2]) if padded else \
                (q.shape[0], k.shape[2], q.shape[2], k.shape[2], None)
        selection = self._given_selection(scores, threshold, selection, q.shape[1], entries)
        use_triton = backend == "triton" or (backend == "auto" and q.is_cuda and q.dtype != torch.float64)
        if use_triton:
            lengths = (max_seqlen_q, max_seqlen_k, q.shape[0], k.shape[0]) if packed else (q.shape[2], k.shape[2])
            inputs.check_kernel(q, lengths)
            sel = self._kernel_selection(q, k, selection, rows, scale)
            scale = q.shape[-1] ** -0.5 if scale is None else scale
            cu_q, cu_k = rows if padded else (cu_seqlens_q, cu_seqlens_k)
            out, lse = attention(q, k, v, self._op_key, scale, cu_q, cu_k, max_seqlen_q or 0, max_seqlen_k or 0,
                                 list(_config or ()), sel, padded, bool(deterministic))
            if sinks is not None:
                out, lse = with_sinks(out, lse, sinks, packed)
            result = (out, lse) if return_lse else (out,)
            if not return_selection:
                return result if return_lse else out
            # (a given selection as given; the kernels read it sorted, -1 slots first)
            given = selection[0] if isinstance(selection, (tuple, list)) else selection
            return result + ((sel if given is None else given.to(torch.int32)),)
        if packed:
            sel = None if selection is None else self._selection_dict(selection, q, k, rows)
            out, lse = self._reference_packed(q, k, v, scale, cu_seqlens_q, cu_seqlens_k, sel)
        elif padded:
            sel = None if selection is None else self._selection_dict(selection, q, k, rows)
            out, lse = self._reference_padded(q, k, v, scale, *rows, sel)
        else:
            sel = None if selection is None else self._selection_dict(selection, q, k)
            out, lse = reference_attention(self.root, q, k, v, scale=scale, selection=sel)
        if sinks is not None:
            out, lse = with_sinks(out, lse, sinks, packed)
        result = (out, lse if q.dtype == torch.float64 else lse.float()) if return_lse else (out,)
        if return_selection:
            chosen = next(iter(sel.values())) if sel is not None else self._reference_selection(q, k, rows, scale)
            result += (chosen.to(torch.int32),)
        return result if len(result) > 1 else out

    def _reference_selection(self, q, k, rows, scale=None) -> torch.Tensor:
        """The reference's topk selection of a call, in the call's layout (dense, padded or packed)."""
        atom = next(a for a in self.dynamic_atoms if a.kind == "topk")
        if rows is None:
            return compute_selection(self.root, q, k, scale=scale)[atom]
        if len(rows) == 2:
            return self._padded_selection(q, k, [atom], *rows, scale=scale)[0]
        # packed: the sequences as the entries of a padded batch, [S, H, T, D] views
        cu_q, cu_k, max_q, _ = rows
        s = cu_q.numel() - 1
        qv, kv = (x.transpose(0, 1)[None].expand(s, -1, -1, -1) for x in (q, k))
        entries = [torch.stack((cu[:-1], cu[1:] - cu[:-1]), 1) for cu in (cu_q, cu_k)]
        return self._padded_selection(qv, kv, [atom], *entries, longest=max_q, scale=scale)[0]

    # -- decoding ----------------------------------------------------------------------

    def summarize(self, k_cache, v_cache, cache_seqlens, *, block_table=None, into=None, new=None,
                  cache_leftpad=None):
        """The block summaries a dynamic pattern's decode() reads (float32, one pass
        over the cache). `into` + `new`: refresh only the blocks touched by each
        sequence's last `new` keys (after appending them). decode() itself
        refreshes the blocks of the tokens of its own call. cache_leftpad: as in
        decode() (each sequence's blocks count from its first slot): pass the same
        to both."""
        if not self.is_dynamic:
            raise InputError(f"summarize: pattern {self.name!r} is static; its decode() needs no summaries")
        if not isinstance(k_cache, torch.Tensor) or k_cache.dim() != 4:
            raise InputError("summarize: k_cache must be a 4-dimensional tensor")
        paged = isinstance(block_table, torch.Tensor) and block_table.dim() == 2
        shape = (block_table.shape[0], k_cache.shape[2]) if paged else k_cache.shape[:2]
        inputs.check_decode(k_cache.new_empty((*shape, 1, k_cache.shape[3])), k_cache, v_cache, cache_seqlens,
                            block_table, None)
        from ..kernels.decode import summarize

        plan = self.plan
        if new is not None:
            new = inputs.check_size("new", new, 1)
            if into is None:
                raise InputError("summarize: new= refreshes existing summaries: pass them as into=")
        lens = cache_seqlens
        if cache_leftpad is not None:
            inputs.check_leftpad(k_cache.new_empty((shape[0], 1, 1, 1)), cache_seqlens, cache_leftpad, block_table)
            lens = torch.stack((cache_leftpad, cache_seqlens - cache_leftpad), 1).contiguous()
        return summarize(plan, k_cache, v_cache, lens, block_table, into, new)

    def decode(self, q, k_cache, v_cache, cache_seqlens, *, block_table=None, summaries=None, scale=None,
               return_lse=False, num_splits=None, backend="auto", sinks=None, cache_leftpad=None, layout="bhsd",
               selection=None, return_selection=False, scores=None, threshold=None, **keywords):
        """Attention of a few new queries per sequence against a KV cache (flash-decoding).

        q [B, H, Lq, D]: the queries at positions cache_seqlens[b] - Lq .. - 1;
        k_cache/v_cache [B, Hk, Lmax, D/Dv] (or paged [pages, page_size, Hk, D]
        with block_table int32 [B, pages]); cache_seqlens int32 [B], the new keys
        included. Equals the prefill call with these queries on each sequence's
        first cache_seqlens[b] keys. Dynamic patterns read `summaries`
        (summarize(); refreshed here for this call's tokens) or, without them,
        summarize the whole cache first. Returns out [B, H, Lq, Dv] (and lse). `sinks` as in
        the prefill call. cache_leftpad (int32 [B], a contiguous cache; FlashAttention's name):
        sequence b's keys are the slots [cache_leftpad[b], cache_seqlens[b]), its positions counted from 0 at cache_leftpad[b] (a left-padded batch).
        layout="bshd": FlashAttention's flash_attn_with_kvcache layout, read in place: q
        [B, Lq, H, D], a contiguous cache [B, Lmax, Hk, D] (a paged cache is [pages, page_size,
        Hk, D] in both layouts); out is [B, Lq, H, Dv] (a view), lse [B, H, Lq].
        selection: a topk selection to use instead of scoring blocks (TidalDecode, Recycled
        Attention: one layer's or step's choice reused), int [B, H, R, n] with R =
        ceil((Lq - 1) / block) + 1 rows (row r: sequence b's query group (Lk_b - Lq) // block
        + r), -1 for empty slots; with it no block summary is computed (unless the pattern has
        landmarks or `summaries` are kept). return_selection=True appends the selection used
        (int32, that layout; None without topk) to the result: (out[, lse], selection).
        scores / threshold: as in the prefill call (topk(score=given)), [B, H or Hk, R,
        ceil(capacity / block)] in this layout.
        FlashAttention's keywords as in the prefill call (`softmax_scale`, ...)."""
        if layout != "bhsd":
            q, k_cache, v_cache = inputs.from_decode_layout(layout, q, k_cache, v_cache, block_table is not None)
            out = self.decode(q, k_cache, v_cache, cache_seqlens, block_table=block_table, summaries=summaries,
                              scale=scale, return_lse=return_lse, num_splits=num_splits, backend=backend,
                              sinks=sinks, cache_leftpad=cache_leftpad, selection=selection,
                              return_selection=return_selection, scores=scores, threshold=threshold, **keywords)
            if not (return_lse or return_selection):
                return out.transpose(1, 2)
            return (out[0].transpose(1, 2), *out[1:])
        if keywords:
            heads = inputs.heads_of(q, k_cache, 2 if block_table is not None else 1)
            scale = inputs.foreign_keywords(keywords, scale, heads, "decode", _DECODE_KEYWORDS)
        scale = inputs.check_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale)
        hk = k_cache.shape[2] if block_table is not None else k_cache.shape[1]
        self._heads(q.shape[1], hk)
        if backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        if num_splits is not None:
            num_splits = inputs.check_size("num_splits", num_splits, 1)
        if sinks is not None:
            check_sinks(sinks, q, "decode")
        if cache_leftpad is not None:
            inputs.check_leftpad(q, cache_seqlens, cache_leftpad, block_table)
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        entries = None
        if scores is not None:
            cap = block_table.shape[1] * k_cache.shape[1] if block_table is not None else k_cache.shape[2]
            counts = cache_seqlens if cache_leftpad is None else cache_seqlens - cache_leftpad
            entries = (q.shape[0], cap, q.shape[2], counts, q.shape[2])
        selection = self._given_selection(scores, threshold, selection, q.shape[1], entries)
        if selection is None:
            self._decode_votes_once()
        if selection is not None:
            selection = self._decode_selection(selection, q)
        if backend == "reference" or (backend == "auto" and not q.is_cuda):
            out, lse, selection = self._reference_decode(q, k_cache, v_cache, cache_seqlens, block_table, scale,
                                                         cache_leftpad, selection)
        else:
            from ..kernels.decode import decode

            paged = block_table is not None
            inputs.check_kernel(q, (block_table.shape[1] * k_cache.shape[1] if paged else k_cache.shape[2],), "decode")
            out, lse, selection = decode(self.plan, q, k_cache, v_cache, cache_seqlens, scale, not q.is_cuda,
                                         block_table, summaries, num_splits, leftpad=cache_leftpad,
                                         selection=selection)
        if sinks is not None:
            out, lse = with_sinks(out, lse, sinks)
        result = (out, lse) if return_lse else (out,)
        if return_selection:
            result += (selection,)
        return result if len(result) > 1 else out

    def _given_selection(self, scores, threshold, selection, num_heads, entries):
        """The selection of a topk(score=given) pattern from the call's `scores` (else `selection`
        as given). `entries` (with scores) is the call's layout (batch, kv_len, q_len, kv_lens,
        padded_rows): `batch` entries; rows num_groups(q_len, kv_len) for a dense call,
        padded_groups(padded_rows) for padded, packed and decoding calls; blocks of `kv_len`
        keys; `q_len`, `kv_lens`: each entry's query and key counts (ints or [batch])."""
        atoms = [a for a in self.dynamic_atoms if a.kind == "topk"]
        wanted = [a for a in atoms if decode_topk(a).score == "given"]
        if not wanted:
            if scores is not None or threshold is not None:
                raise InputError(f"scores= and threshold= are for topk(..., score=given); pattern {self.name!r} "
                                 "scores its blocks itself")
            return selection
        if len(atoms) != 1:
            raise InputError(f"pattern {self.name!r}: topk(score=given) takes one topk(...) atom per pattern")
        if scores is None:
            if selection is None:
                raise InputError(f"pattern {self.name!r}: topk(..., score=given) needs scores= (block scores "
                                 "[B, H or Hk, R, blocks]) or selection=")
            return selection
        if selection is not None:
            raise InputError("give scores= or selection=, not both")
        t = decode_topk(wanted[0])
        batch, kv_len, q_len, kv_lens, padded_rows = entries
        r = num_groups(q_len, kv_len, t.block) if padded_rows is None else padded_groups(padded_rows, t.block)
        shape = (batch, r, -(-kv_len // t.block))
        ok = isinstance(scores, torch.Tensor) and scores.is_floating_point() and scores.dim() == 4
        if not ok or (scores.shape[0], *scores.shape[2:]) != shape or scores.shape[1] < 1 \
                or num_heads % scores.shape[1] or scores.shape[1] > num_heads:
            got = f"{getattr(scores, 'dtype', type(scores).__name__)} {tuple(getattr(scores, 'shape', ()))}"
            raise InputError(f"scores for topk(n={t.n}, block={t.block}, score=given) must be a floating tensor "
                             f"[{shape[0]}, H or Hk, {shape[1]}, {shape[2]}], got {got}")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
            raise InputError(f"threshold must be a number, got {type(threshold).__name__}")
        return select_given(scores, t.n, t.block, q_len, kv_lens, t.causal, num_heads, threshold)

    def _decode_votes_once(self) -> None:
        """topk(score=attention(...)) selects once, from the prompt's last queries (SnapKV): decode
        takes that selection and never scores blocks by itself."""
        for a in self.dynamic_atoms:
            t = decode_topk(a) if a.kind == "topk" else None
            if t is not None and isinstance(t.score, AttentionScore):
                raise InputError(f"decode: topk(n={t.n}, block={t.block}, score={t.score}) selects once, from the "
                                 "prompt's last queries (SnapKV): pass that selection as selection= (the prefill "
                                 "call's return_selection=True, its last row: sel[:, :, -1:])")

    def _decode_selection(self, selection, q) -> torch.Tensor:
        """A given decode selection, checked ([B, H, ceil((Lq - 1) / block) + 1, n], integers on
        q's device), as the kernels read it: int32, rows ascending."""
        atoms = [a for a in self.dynamic_atoms if a.kind == "topk"]
        if len(atoms) != 1:
            raise InputError(f"decode: selection= takes a pattern with one topk(...) atom; {self.name!r} has "
                             f"{len(atoms)}")
        t = decode_topk(atoms[0])
        want = (q.shape[0], q.shape[1], padded_groups(q.shape[2], t.block), t.n)
        ok = isinstance(selection, torch.Tensor) and selection.dtype in (torch.int8, torch.int16, torch.int32,
                                                                            torch.int64)
        if not ok or tuple(selection.shape[:3]) != want[:3] or not 1 <= selection.shape[3] <= t.n:
            got = f"{getattr(selection, 'dtype', type(selection).__name__)} {tuple(getattr(selection, 'shape', ()))}"
            raise InputError(f"decode: selection for topk(n={t.n}, block={t.block}) must be an integer tensor of "
                             f"shape {want} (or up to n slots), got {got}")
        if selection.device != q.device:
            raise InputError(f"decode: selection is on {selection.device}, q on {q.device}")
        return selection.to(torch.int32).sort(dim=-1).values

    def _reference_decode(self, q, k_cache, v_cache, lens, block_table, scale, leftpad=None, selection=None):
        """The reference, sequence by sequence (gathers paged caches); (out, lse, selection):
        the selection given, or the one the reference chose, in decode's layout."""
        outs, lses = [], []
        atoms = [a for a in self.dynamic_atoms if a.kind == "topk"]
        block = decode_topk(atoms[0]).block if len(atoms) == 1 else None
        chosen = None
        if block is not None:
            rows = padded_groups(q.shape[2], block)
            chosen = selection if selection is not None else torch.full(
                (q.shape[0], q.shape[1], rows, decode_topk(atoms[0]).n), -1, dtype=torch.int32, device=q.device)
        starts = [0] * len(lens) if leftpad is None else leftpad.tolist()
        for b, (s, n) in enumerate(zip(starts, lens.tolist())):
            if block_table is None:
                k, v = k_cache[b:b + 1, :, s:n], v_cache[b:b + 1, :, s:n]
            else:
                page = k_cache.shape[1]
                pages = block_table[b, :-(-n // page)].long()
                k = k_cache[pages].flatten(0, 1)[:n].transpose(0, 1)[None]
                v = v_cache[pages].flatten(0, 1)[:n].transpose(0, 1)[None]
            given = None
            if chosen is not None:
                used = num_groups(q.shape[2], n - s, block)
                if selection is not None:
                    given = {atoms[0]: selection[b:b + 1, :, :used].long()}
                else:
                    given = compute_selection(self.root, q[b:b + 1], k)
                    sel = given[atoms[0]]
                    chosen[b:b + 1, :, :sel.shape[2], :sel.shape[3]] = sel
            o, lse = reference_attention(self.root, q[b:b + 1], k, v, scale=scale, selection=given)
            outs.append(o)
            lses.append(lse.float() if q.dtype != torch.float64 else lse)
        return torch.cat(outs), torch.cat(lses), chosen

    def _kernel_selection(self, q, k, selection, rows=None, scale=None):
        """The int32 selection tensor the kernels read (None for patterns without topk).
        `rows`: a padded batch's (q_rows, kv_rows), or a packed one's (cu_q, cu_k, max_q, max_k).
        `scale`: the call's (topk(score=attention(...)) votes with it)."""
        if not self.is_dynamic:
            return None
        if not torch.compiler.is_compiling():  # (traced, the op itself raises the same error)
            self.plan  # (InputError when the pattern has no generated kernels)
        if selection is not None:
            sel = self._selection_dict(selection, q, k, rows)
            # ascending rows (the kernels skip a repeated id when it follows itself)
            return next(iter(sel.values())).to(device=q.device, dtype=torch.int32).sort(dim=-1).values
        if any(a.kind == "topk" for a in self.dynamic_atoms):
            return select(q, k, self._op_key, *(rows or ()), scale=scale)
        return None

    def _reference_packed(self, q, k, v, scale, cu_q, cu_k, selection=None):
        """The reference on a packed batch: each sequence on its own. `selection` ({atom:
        [S, H, R, n]}, rows from each sequence's first group): its rows per sequence."""
        outs, lses = [], []
        starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
        for i, (a, b, c, d) in enumerate(zip(starts_q, starts_q[1:], starts_k, starts_k[1:])):
            sel = None if selection is None else {
                at: t[i:i + 1, :, :num_groups(b - a, d - c, decode_topk(at).block)] for at, t in selection.items()}
            o, lse = reference_attention(self.root, q[a:b].transpose(0, 1)[None], k[c:d].transpose(0, 1)[None],
                                         v[c:d].transpose(0, 1)[None], scale=scale, selection=sel)
            outs.append(o[0].transpose(0, 1))
            lses.append(lse[0])
        if not outs:
            return (q.new_zeros((0, q.shape[1], v.shape[-1])), q.new_zeros((q.shape[1], 0), dtype=torch.float32))
        return torch.cat(outs, 0), torch.cat(lses, 1)

    def _reference_padded(self, q, k, v, scale, q_rows, kv_rows, selection=None):
        """The reference on a padded batch: each entry's real rows on their own, padded with 0 / -inf.
        `selection` ({atom: [B, H, R, n]}, rows from each entry's first group): its rows per entry."""
        outs, lses = [], []
        lq = q.shape[2]
        for i, ((sq, nq), (sk, nk)) in enumerate(zip(q_rows.tolist(), kv_rows.tolist())):
            sel = None if selection is None else {
                a: t[i:i + 1, :, :num_groups(nq, nk, decode_topk(a).block)] for a, t in selection.items()}
            o, lse = reference_attention(self.root, q[i:i + 1, :, sq:sq + nq], k[i:i + 1, :, sk:sk + nk],
                                         v[i:i + 1, :, sk:sk + nk], scale=scale, selection=sel)
            outs.append(torch.nn.functional.pad(o, (0, 0, sq, lq - sq - nq)))
            lses.append(torch.nn.functional.pad(lse, (sq, lq - sq - nq), value=-math.inf))
        if not outs:
            return q.new_zeros((*q.shape[:3], v.shape[-1])), q.new_zeros(q.shape[:3])
        return torch.cat(outs), torch.cat(lses)

    def _selection_dict(self, selection, q, k, rows=None) -> dict:
        """{atom: selection} of a given selection, its shape checked: [B, H, R, n]; a padded
        batch's (rows: its q_rows, kv_rows) or a packed one's (rows: cu_q, cu_k, max_q, max_k;
        B = its sequences) has R = padded_groups(longest queries, block)."""
        atoms = [a for a in self.dynamic_atoms if a.kind == "topk"]
        given = selection if isinstance(selection, (tuple, list)) else (selection,)
        if len(given) != len(atoms):
            raise InputError(f"selection: expected {len(atoms)} tensor(s), one per topk atom, got {len(given)}")
        out = {}
        for atom, sel in zip(atoms, given):
            t = decode_topk(atom)
            block, n = t.block, t.n
            if rows is None:
                want = (q.shape[0], q.shape[1], num_groups(q.shape[2], k.shape[2], block), n)
            elif len(rows) == 2:  # padded
                want = (q.shape[0], q.shape[1], padded_groups(q.shape[2], block), n)
            else:  # packed: q [T, H, D]
                want = (rows[0].shape[0] - 1, q.shape[1], padded_groups(rows[2], block), n)
            ok_dtype = isinstance(sel, torch.Tensor) and sel.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
            if not ok_dtype or tuple(sel.shape) != want:
                raise InputError(f"selection for {atom.kind}(n={n}, block={block}) must be an integer tensor "
                                 f"of shape {want}, got {getattr(sel, 'dtype', type(sel).__name__)} "
                                 f"{tuple(getattr(sel, 'shape', ()))}")
            nb = -(-(k.shape[2] if rows is None or len(rows) == 2 else rows[3]) // block)
            if sel.device != q.device:
                raise InputError(f"selection is on {sel.device}, q on {q.device}")
            # (checked where it costs no host synchronisation; the kernels skip ids outside [0, nb))
            if sel.numel() and not sel.is_cuda and (int(sel.min()) < -1 or int(sel.max()) >= nb):
                raise InputError(f"selection for {atom.kind}(n={n}, block={block}) holds block ids outside "
                                 f"[-1, {nb}) (-1 marks an empty slot; there are {nb} key blocks)")
            out[atom] = sel
        return out
