"""The backward's pattern-independent kernels, hand-written rather than
generated: before the gradient kernels, delta = rowsum(dO * O) - dLSE in
float32; after them, the in-order sum of the parts of split key tiles."""
import triton
import triton.language as tl


@triton.jit
def delta_kernel(O, DO, DLSE, DELTA,
                 stride_ob, stride_oh, stride_om, stride_od,
                 stride_dob, stride_doh, stride_dom, stride_dod,
                 stride_lb, stride_lh, stride_lm,
                 stride_db, stride_dh, stride_dm,
                 rows, HEAD_DIM_V: tl.constexpr, BLOCK_DV: tl.constexpr, HAS_DLSE: tl.constexpr,
                 BLOCK: tl.constexpr):
    # one program per (tile of BLOCK rows, head, batch entry)
    h = tl.program_id(1).to(tl.int64)
    b = tl.program_id(2).to(tl.int64)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_DV)
    ok = offs < rows
    mask = ok[:, None] & (offs_d[None, :] < HEAD_DIM_V)
    o = tl.load(O + b * stride_ob + h * stride_oh + offs[:, None] * stride_om + offs_d[None, :] * stride_od,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                 mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    if HAS_DLSE:
        delta -= tl.load(DLSE + b * stride_lb + h * stride_lh + offs * stride_lm, mask=ok, other=0.0).to(tl.float32)
    tl.store(DELTA + b * stride_db + h * stride_dh + offs * stride_dm, delta, mask=ok)


@triton.jit(do_not_specialize=["Lk", "LONG_KEYS", "SPLIT"])
def split_sum_kernel(WS, OUT, CU_K, stride_b, stride_h, stride_n, stride_d, Lk, LONG_KEYS, SPLIT,
                     scale, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, VARLEN: tl.constexpr,
                     BLOCK: tl.constexpr):
    # OUT[b, hk, key] = scale * sum over parts p = 0 .. SPLIT-1 (in order) of WS[p, b, hk, key]
    # for keys [0, min(LONG_KEYS, Lk)) of each sequence; WS is [SPLIT, B, Hk, LONG_KEYS, BLOCK_D].
    hk = tl.program_id(1)
    b = tl.program_id(2)
    ks = 0
    if VARLEN:
        ks = tl.load(CU_K + b)
        Lk = tl.load(CU_K + b + 1) - ks
    keys = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    ok = keys < tl.minimum(LONG_KEYS, Lk)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=tl.float32)
    row = (b * tl.num_programs(1) + hk).to(tl.int64) * LONG_KEYS + keys
    step = tl.num_programs(2).to(tl.int64) * tl.num_programs(1) * LONG_KEYS * BLOCK_D
    for p in range(0, SPLIT):
        acc += tl.load(WS + p * step + row[:, None] * BLOCK_D + offs_d[None, :], mask=ok[:, None], other=0.0)
    dst = OUT + b.to(tl.int64) * stride_b + hk.to(tl.int64) * stride_h + (ks + keys.to(tl.int64))[:, None] * stride_n
    tl.store(dst + offs_d[None, :] * stride_d, (acc * scale).to(OUT.dtype.element_ty),
             mask=ok[:, None] & (offs_d[None, :] < HEAD_DIM))
