"""Kernel oracles (part of `sparsedsl.testing`): attention_inputs draws q, k, v
for a kernel_shapes() dict; assert_matches_reference and
assert_grads_match_reference check a pattern's kernel (forward, gradients)
against the float64 reference. torch is imported inside the functions.
"""
from __future__ import annotations

from .strategies import KERNEL_LAYOUTS

__all__ = ["attention_inputs", "assert_matches_reference", "assert_grads_match_reference"]


def attention_inputs(shape: dict, seed: int = 0, device=None):
    """q, k, v for a kernel_shapes() dict, standard normal from `seed`.

    The layout decides the memory (see KERNEL_LAYOUTS): with "nan_padded" the
    tensors are views into buffers that hold NaN before the first row, past
    q_len / kv_len and past the head dim, so a kernel that reads out of bounds
    produces NaN."""
    import torch

    dtype = getattr(torch, shape["dtype"]) if isinstance(shape["dtype"], str) else shape["dtype"]
    layout = shape.get("layout", "contiguous")
    gen = torch.Generator().manual_seed(seed)
    b, h, hk = shape["batch"], shape["num_heads"], shape["num_kv_heads"]
    lq, lk, d, dv = shape["q_len"], shape["kv_len"], shape["head_dim"], shape.get("head_dim_v", shape["head_dim"])
    out = []
    for heads, length, dim in ((h, lq, d), (hk, lk, d), (hk, lk, dv)):
        x = torch.randn(b, heads, length, dim, generator=gen).to(device=device, dtype=dtype)
        if layout == "nan_padded":  # NaN before and after the rows, and after the head dim
            buf = torch.full((b, heads, length + 10, dim + 5), float("nan"), dtype=dtype, device=x.device)
            buf[:, :, 3:3 + length, :dim] = x
            x = buf[:, :, 3:3 + length, :dim]
        elif layout == "transposed":
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
        elif layout != "contiguous":
            raise ValueError(f"unknown layout {layout!r}; expected one of {KERNEL_LAYOUTS}")
        out.append(x)
    return tuple(out)


_DEFAULT_FACTOR = {"float16": 2.0, "bfloat16": 2.0, "float32": 10.0}
# Gradients in half precision: the flash backward rounds P and dS to the input dtype
# for its tensor-core products (as FlashAttention does), the reference's autograd rounds
# other intermediates; measured ratios reach ~2.8 on tiny random cases.
_GRAD_FACTOR = {"float16": 4.0, "bfloat16": 4.0, "float32": 10.0}
# The floor: a tiny absolute error, plus 4 float32 ulps of the values compared
# (the kernel computes in float32: an LSE of 40 cannot be closer than ~4e-6).
_ABS_FLOOR = 1e-7
_ULPS = 4 * 2.0 ** -23


def _errors(x, golden, finite):
    """(mean, max, index of the max) of |x - golden| over the finite entries of
    golden, and (mean, max) of |golden| there."""
    import torch

    diff = torch.where(finite, (x.double() - golden).abs(), torch.zeros_like(golden))
    diff = torch.nan_to_num(diff, nan=float("inf"))
    mag = torch.where(finite, golden.abs(), torch.zeros_like(golden))
    n = int(finite.sum())
    if n == 0:
        return 0.0, 0.0, None, 0.0, 0.0
    idx = tuple(int(i) for i in torch.unravel_index(diff.flatten().argmax(), diff.shape))
    return float(diff.sum()) / n, float(diff.max()), idx, float(mag.sum()) / n, float(mag.max())


def _shared_selection(p, q, k, call_kwargs: dict):
    """The topk selection every run of a check uses ({atom: ids}; None for a static pattern): the
    one given in call_kwargs, else the float32 reference's, then also put in call_kwargs. (The
    kernels' own selection is tested on its own: tests/test_selection.py.)"""
    from ..passes.dynamic import decode_topk
    from ..reference.attention import compute_selection

    if not p.is_dynamic:
        return None
    if "selection" in call_kwargs:
        return p._selection_dict(call_kwargs["selection"], q, k)
    topk = [a for a in p.dynamic_atoms if a.kind == "topk"]
    if any(decode_topk(a).score == "given" for a in topk):
        selection = {topk[0]: _drawn_gate_selection(p, topk, q, k)}
        call_kwargs["selection"] = selection[topk[0]]
        return selection
    selection = compute_selection(p.root, q.detach(), k.detach())
    if topk:
        call_kwargs["selection"] = tuple(selection[a] for a in topk)
    return selection


def _drawn_gate_selection(p, topk, q, k):
    """topk(score=given): the selection of scores drawn as a gate would give them (seeded,
    [B, H, R, blocks]), so that a check covers the kernels on such a pattern."""
    import torch

    from ..errors import InputError
    from ..ir.topk import num_groups
    from ..passes.dynamic import decode_topk
    from ..reference.select import select_given

    if len(topk) != 1:
        raise InputError(f"pattern {p.name!r}: topk(score=given) takes one topk(...) atom per pattern")
    t = decode_topk(topk[0])
    (b, h, lq), lk = q.shape[:3], k.shape[2]
    gen = torch.Generator().manual_seed(lq * 7919 + lk)
    scores = torch.randn(b, h, num_groups(lq, lk, t.block), -(-lk // t.block), generator=gen).to(q.device)
    return select_given(scores, t.n, t.block, lq, lk, t.causal, h)


def assert_matches_reference(p, q, k, v, *, backend: str = "triton", factor: float | None = None,
                             scale: float | None = None, **call_kwargs):
    """Run attention of the compiled pattern `p` on `backend` and check it
    against the exact reference; return the (out, lse) it checked.

    The rule of FlashAttention/FlexAttention: the reference runs in float64
    ("golden") and in q's dtype; the error of the result against golden (the
    mean and the largest absolute error, of the output and of the LSE) must be
    at most `factor` times the same-dtype reference's error plus a tiny floor
    (1e-7 plus 4 float32 ulps of the values compared: the kernel computes in
    float32). `factor` defaults to 2 for float16/bfloat16, 10 for float32. On
    top:

    * no NaN anywhere in the output or the LSE, and every output element is
      finite where golden is (the kernel allocates its outputs itself, so an
      unwritten element would show up as garbage or NaN);
    * rows that see nothing (golden LSE -inf) have LSE exactly -inf and output
      exactly 0, and no other row has LSE -inf;
    * shapes and dtypes: out [B, H, Lq, Dv] in q's dtype, lse [B, H, Lq].

    Raises AssertionError with a report (errors, shapes, the worst row and a
    hint). `call_kwargs` go to the call (e.g. _config=(16, 16)); for a topk
    pattern, all three runs use one block selection: `selection=` if given,
    else the float32 reference's."""
    import torch

    from ..reference.attention import reference_attention

    dname = str(q.dtype).replace("torch.", "")
    if factor is None:
        factor = _DEFAULT_FACTOR.get(dname, 10.0)
    selection = _shared_selection(p, q, k, call_kwargs)
    out, lse = p(q, k, v, scale=scale, backend=backend, return_lse=True, **call_kwargs)
    golden, glse = reference_attention(p.root, q.double(), k.double(), v.double(), scale=scale, selection=selection)
    ref, rlse = reference_attention(p.root, q, k, v, scale=scale, selection=selection, compute_dtype=q.dtype)

    b, h, lq, _ = q.shape
    what = (f"pattern {p.name!r} ({' '.join(p.ir().split())[:300]})\n"
            f"  q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {dname}, scale={scale}, backend={backend!r}"
            + "".join(f", {key}={val!r}" for key, val in call_kwargs.items() if key != "selection"))

    def fail(msg: str, hint: str = ""):
        raise AssertionError(f"{msg}\n  {what}" + (f"\n  hint: {hint}" if hint else ""))

    want_out = (b, h, lq, v.shape[-1])
    if tuple(out.shape) != want_out or out.dtype != q.dtype:
        fail(f"output is {out.dtype} {list(out.shape)}, expected {q.dtype} {list(want_out)}")
    if tuple(lse.shape) != (b, h, lq):
        fail(f"lse has shape {list(lse.shape)}, expected {[b, h, lq]}")
    where_hint = ("print p.mask(Lq, Lk, H, Hk)[h, row] for the row's visible keys; SPARSEDSL_DUMP=DIR writes the "
                  "generated kernel; rerun with backend='reference' to rule out the reference")

    def at(idx):
        if idx is None:
            return ""
        r = idx[2]
        return f" at [b={idx[0]}, h={idx[1]}, row={r}] (query position {k.shape[2] - lq + r})"

    for name, x in (("output", out), ("lse", lse)):
        nan = torch.isnan(x)
        if nan.any():
            first = tuple(int(i) for i in nan.nonzero()[0])
            fail(f"{name} has {int(nan.sum())} NaN element(s), the first{at(first)}",
                 "NaN from masked tiles ((-inf) - (-inf) in the online softmax), or an out-of-bounds read "
                 "of NaN padding; " + where_hint)
    empty = torch.isinf(glse) & (glse < 0)
    k_empty = torch.isinf(lse) & (lse < 0)
    if not torch.equal(empty, k_empty.to(empty.device)):
        bad = (empty != k_empty.to(empty.device)).nonzero()
        first = tuple(int(i) for i in bad[0])
        should = bool(empty[first])
        fail(f"{len(bad)} row(s) have the wrong LSE -inf pattern, the first{at(first)}: "
             f"kernel lse {float(lse[first])}, golden {float(glse[first])} "
             f"({'the row sees nothing' if should else 'the row sees some key'})",
             "rows that see no key must have lse = -inf exactly, and only those; " + where_hint)
    if empty.any():
        leak = out.double()[empty].abs().amax() if out.shape[-1] else torch.tensor(0.0)
        if float(leak) != 0.0:
            fail(f"rows that see nothing must have output exactly 0; found {float(leak):.3g}",
                 "the normalisation of empty rows (l = 0) must write 0")
    finite = torch.isfinite(golden)
    bad_fin = finite & ~torch.isfinite(out.double())
    if bad_fin.any():
        first = tuple(int(i) for i in bad_fin.nonzero()[0])
        fail(f"output has {int(bad_fin.sum())} non-finite element(s) where golden is finite, the first{at(first)}",
             "an output element left unwritten, overflow, or an out-of-bounds read; " + where_hint)

    e_mean, e_max, e_idx, g_mean, g_max = _errors(out, golden, finite)
    r_mean, r_max = _errors(ref, golden, finite)[:2]
    gfin = torch.isfinite(glse)
    l_mean, l_max, l_idx, gl_mean, gl_max = _errors(lse, glse, gfin)
    lr_mean, lr_max = _errors(rlse, glse, gfin)[:2]
    checks = [("output mean abs error", e_mean, r_mean, g_mean, e_idx),
              ("output max abs error", e_max, r_max, g_max, e_idx),
              ("lse mean abs error", l_mean, lr_mean, gl_mean, l_idx),
              ("lse max abs error", l_max, lr_max, gl_max, l_idx)]
    for label, got, ref_err, magnitude, idx in checks:
        allowed = factor * ref_err + _ABS_FLOOR + _ULPS * magnitude
        if got <= allowed:
            continue
        lines = [f"{label} {got:.3e} exceeds {allowed:.3e} = {factor:g} x the same-dtype reference's ({ref_err:.3e}) "
                 f"+ a floor",
                 f"  output: mean {e_mean:.3e}, max {e_max:.3e}{at(e_idx)}; reference ({dname}): mean {r_mean:.3e}, "
                 f"max {r_max:.3e}",
                 f"  lse:    mean {l_mean:.3e}, max {l_max:.3e}{at(l_idx)}; reference ({dname}): mean {lr_mean:.3e}, "
                 f"max {lr_max:.3e}"]
        if idx is not None:
            bb, hh = idx[:2]
            if label.startswith("output"):
                err = (out.double() - golden).abs().nan_to_num(float("inf"))
                err_rows = err.amax(-1)[bb, hh] if out.shape[-1] else torch.zeros(lq)
                row_limit = factor * r_max + _ABS_FLOOR + _ULPS * g_max
            else:
                err_rows = torch.where(gfin, (lse.double() - glse).abs(), torch.zeros_like(glse))[bb, hh]
                row_limit = factor * lr_max + _ABS_FLOOR + _ULPS * gl_max
            wrong = (err_rows > row_limit).nonzero().flatten().tolist()
            lines.append(f"  rows of [b={bb}, h={hh}] off by more than {row_limit:.2e}: "
                         f"{wrong[:12]}{' ...' if len(wrong) > 12 else ''}")
        fail("\n".join(lines),
             "a few wrong rows usually mean a mask or tile-bound bug (a key skipped or seen twice); errors "
             "everywhere a precision or scale problem; " + where_hint)
    return out, lse


def _most_attention_on_a_key(p, q, k, scale, selection=None) -> float:
    """max over keys of sum_i P_ij over the queries (and query heads) that see key j, in float64
    (`selection`: the check's shared one, else the reference's)."""
    import torch

    from ..reference.attention import compute_selection, visible

    b, h, lq, d = q.shape
    hk, lk = k.shape[1], k.shape[2]
    if q.numel() == 0 or k.numel() == 0:
        return 0.0
    sel = selection if selection is not None else compute_selection(p.root, q, k) if p.is_dynamic else None
    vis = visible(p.root, lq, lk, h, hk, torch.arange(lq, device=q.device), sel).expand(b, h, lq, lk)
    kk = k.double().repeat_interleave(h // hk, 1)
    s = (q.double() @ kk.transpose(-1, -2)) * (d ** -0.5 if scale is None else scale)
    prob = torch.softmax(s.masked_fill(~vis, float("-inf")), -1).nan_to_num(0.0)
    return float(prob.view(b, hk, h // hk, lq, lk).sum((2, 3)).max())


def assert_grads_match_reference(p, q, k, v, dout=None, *, backend: str = "triton", factor: float | None = None,
                                 scale: float | None = None, lse_weight: float = 0.0, seed: int = 0, **call_kwargs):
    """Check the gradients of attention of `p` on `backend` against the exact
    reference; return (dq, dk, dv) as checked.

    The loss is sum(out * dout) + lse_weight * sum(lse) (dout: standard normal
    from `seed` unless given; any strides). The rule is
    assert_matches_reference's: each gradient's mean and largest absolute
    error against the float64 reference ("golden") must be at most `factor`
    (default 4 for float16/bfloat16, 10 for float32) times the error of the
    same-dtype reference, plus a tiny floor and the error the flash backward
    takes from reading O as stored (rounded to q's dtype; computed from the
    exact O). On top: no NaN; finite wherever golden is; query rows that see nothing get a gradient of exactly 0. q, k
    and v keep their strides (a NaN-padded view stays one)."""
    import torch

    from ..reference.attention import reference_attention

    dname = str(q.dtype).replace("torch.", "")
    if factor is None:
        factor = _GRAD_FACTOR.get(dname, 10.0)
    selection = _shared_selection(p, q, k, call_kwargs)
    if dout is None:
        gen = torch.Generator().manual_seed(seed)
        dout = torch.randn((*q.shape[:3], v.shape[-1]), generator=gen).to(device=q.device, dtype=q.dtype)

    def grads(fn, dtype):
        xs = [t.detach() if dtype == q.dtype else t.detach().to(dtype) for t in (q, k, v)]
        xs = [x.requires_grad_() for x in xs]
        out, lse = fn(*xs)
        loss = (out.to(dtype) * dout.to(dtype)).sum() + lse_weight * lse.to(dtype).sum()
        return torch.autograd.grad(loss, xs, allow_unused=True), lse, out.detach()

    got, _, _ = grads(lambda a, b, c: p(a, b, c, scale=scale, backend=backend, return_lse=True, **call_kwargs),
                      q.dtype)
    golden, glse, gout = grads(lambda a, b, c: reference_attention(p.root, a, b, c, scale=scale, selection=selection),
                               torch.float64)
    ref, _, _ = grads(lambda a, b, c: reference_attention(p.root, a, b, c, scale=scale, selection=selection,
                                                          compute_dtype=q.dtype), q.dtype)
    what = (f"pattern {p.name!r} ({' '.join(p.ir().split())[:300]})\n"
            f"  q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, {dname}, scale={scale}, backend={backend!r}, "
            f"lse_weight={lse_weight}" + "".join(f", {key}={val!r}" for key, val in call_kwargs.items()
                                                 if key != "selection"))
    zero = lambda t: torch.zeros_like(t)  # noqa: E731
    # The flash backward forms dS = P * (dP - delta) with delta = rowsum(dO * O): where
    # the two nearly cancel (a row that sees one key has dS = 0 exactly), float32 leaves
    # a few ulps of the cancelled terms, |P dP| <= |dO| |V|. That, times |K| (dq) or
    # |Q| summed over the queries of a key (dk), joins the floor.
    norm = lambda t: float(t.double().norm(dim=-1).max()) if t.numel() else 0.0  # noqa: E731
    top = lambda t: float(t.double().abs().max()) if t.numel() else 0.0  # noqa: E731
    eff_scale = abs(q.shape[-1] ** -0.5 if scale is None else scale)
    cancel = eff_scale * (norm(dout) * norm(v) + abs(lse_weight))
    most = _most_attention_on_a_key(p, q, k, scale, selection)
    terms = {"dq": cancel * top(k), "dk": cancel * top(q) * most, "dv": 0.0}
    # The flash backward reads O as stored, rounded to q's dtype: delta_i = dO_i . O_i is
    # off by |dO_i . (round(O_i) - O_i)| (from the exact O), and dS_ij by P_ij times that.
    # Its mean and largest over the rows, times |K| (dq) or |Q| and a key's attention (dk).
    rounded = gout.to(q.dtype).double()
    d_err = (dout.double().to(gout.device) * (rounded - gout).nan_to_num()).sum(-1).abs()
    d_mean, d_max = (float(d_err.mean()), float(d_err.max())) if d_err.numel() else (0.0, 0.0)
    stored = {"dq": eff_scale * top(k), "dk": eff_scale * top(q) * most, "dv": 0.0}
    for name, x, g, r, like in zip(("dq", "dk", "dv"), got, golden, ref, (q, k, v)):
        x, g, r = (zero(like) if t is None else t for t in (x, g, r))
        if tuple(x.shape) != tuple(like.shape):
            raise AssertionError(f"{name} has shape {list(x.shape)}, expected {list(like.shape)}\n  {what}")
        if torch.isnan(x).any():
            first = tuple(int(i) for i in torch.isnan(x).nonzero()[0])
            raise AssertionError(f"{name} has {int(torch.isnan(x).sum())} NaN element(s), the first at {first}\n"
                                 f"  {what}\n  hint: NaN from a row that sees nothing (lse -inf) or an "
                                 "out-of-bounds read of NaN padding")
        finite = torch.isfinite(g)
        if (finite & ~torch.isfinite(x.double())).any():
            raise AssertionError(f"{name} is not finite where golden is\n  {what}")
        e_mean, e_max, e_idx, g_mean, g_max = _errors(x, g, finite)
        r_mean, r_max = _errors(r, g, finite)[:2]
        for label, err, ref_err, magnitude, d in (("mean", e_mean, r_mean, g_mean, d_mean),
                                                  ("max", e_max, r_max, g_max, d_max)):
            allowed = factor * ref_err + _ABS_FLOOR + _ULPS * (magnitude + terms[name]) + stored[name] * d
            if err > allowed:
                raise AssertionError(
                    f"{name} {label} abs error {err:.3e} exceeds {allowed:.3e} = {factor:g} x the same-dtype "
                    f"reference's ({ref_err:.3e}) + a floor; worst at {e_idx} (golden magnitude: mean {g_mean:.3e}, "
                    f"max {g_max:.3e})\n  {what}\n  hint: a wrong gradient in a few rows or keys usually means a "
                    "tile-bound bug in the transposed plan (dK/dV) or the key plan (dQ)")
    empty = torch.isinf(glse) & (glse < 0)
    if empty.any() and got[0] is not None and got[0].shape[-1]:
        leak = float(got[0].double()[empty.to(got[0].device)].abs().max())
        if leak != 0.0:
            raise AssertionError(f"query rows that see nothing must get dq exactly 0; found {leak:.3g}\n  {what}")
    return got
