"""The transformers integration on the GPU with the generated kernels: bf16 logits by the
error-ratio rule (the error against a float32 eager run with the same dense mask at most twice
bf16 eager's, plus a floor), float32 greedy generation equal to eager's (DynamicCache and
StaticCache), a left-padded batch equal to its rows alone, and a training step's gradients."""
from __future__ import annotations

import copy

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

T = pytest.importorskip("transformers")
from sparsedsl.integrations import transformers as sdt  # noqa: E402
from test_transformers import STREAMING, additive_mask, ids, tiny  # noqa: E402


def _errors(a, golden):
    d = (a.double() - golden).abs()
    return float(d.mean()), float(d.max())


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt-oss"])
def test_bf16_logits_by_the_error_ratio_rule(kind):
    """llama: StreamingLLM against eager given the pattern's dense mask; mistral and gpt-oss
    (sliding layers, sinks): the model's own masks through sparsedsl (pattern None) against eager."""
    base = tiny(kind)
    x = ids(n=300).cuda()
    pattern, mask = (STREAMING, additive_mask(STREAMING, x.shape[1], x.shape[0]).cuda()) if kind == "llama" \
        else (None, None)
    with torch.no_grad():
        # the golden run in float32 (gpt-oss's experts take no float64): bf16's errors dwarf its own
        golden = copy.deepcopy(base).float().cuda()(x, attention_mask=mask).logits
        eager = copy.deepcopy(base).to(torch.bfloat16).cuda()(
            x, attention_mask=None if mask is None else mask.to(torch.bfloat16)).logits
        ours = sdt.apply(copy.deepcopy(base).to(torch.bfloat16).cuda(), pattern, backend="triton")(x).logits
    (e_mean, e_max), (o_mean, o_max) = _errors(eager, golden), _errors(ours, golden)
    assert not ours.isnan().any()
    assert o_mean <= 2 * e_mean + 1e-3 and o_max <= 2 * e_max + 1e-2, (o_mean, e_mean, o_max, e_max)


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt-oss"])
def test_float32_generation_equals_eager(kind, cache):
    ref = tiny(kind).cuda()
    ours = sdt.apply(copy.deepcopy(ref), None, backend="triton")  # the model's own masks, on the kernels
    x = ids(n=40).cuda()
    with torch.no_grad():
        want = ref.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation=cache)
        got = ours.generate(x, max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation=cache)
    assert torch.equal(got, want)


def test_float32_left_padded_batch_and_training_step():
    model = sdt.apply(tiny("llama").cuda().train(), STREAMING, backend="triton")
    n, lens = 150, [150, 97, 20]
    rows = [ids(1, k, seed=10 + i).cuda() for i, k in enumerate(lens)]
    x = torch.zeros(len(lens), n, dtype=torch.long, device="cuda")
    mask = torch.zeros_like(x)
    for i, (r, k) in enumerate(zip(rows, lens)):
        x[i, n - k:], mask[i, n - k:] = r[0], 1
    out = model(x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    out.logits.float().logsumexp(-1).masked_select(mask.bool()).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    total = 0
    for i, (r, k) in enumerate(zip(rows, lens)):
        alone = model(r).logits[0]
        torch.testing.assert_close(out.logits[i, n - k:], alone, rtol=1e-3, atol=1e-3)
        total = total + alone.float().logsumexp(-1).sum()
    total.backward()
    for (name, p), g in zip(model.named_parameters(), got):
        torch.testing.assert_close(g, p.grad, rtol=1e-2, atol=1e-4, msg=name)
