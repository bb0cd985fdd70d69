"""sparsedsl.integrations.transformers on tiny random models built from configs (no
downloads): logits against the model's eager attention given the same dense mask (from the
independent tests/naive.py), greedy generation with DynamicCache and StaticCache, the
gradients of a training step, per-layer patterns, and the clear errors."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch

import sparsedsl
from sparsedsl import InputError

T = pytest.importorskip("transformers")
from sparsedsl.integrations import transformers as sdt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import naive  # noqa: E402

VOCAB = 97
CAUSAL = sparsedsl.compile_pattern("pattern causal_() { causal }")
STREAMING = sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=2, window=6)


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, attn_implementation="eager")
    if kind == "llama":
        model = T.LlamaForCausalLM(T.LlamaConfig(intermediate_size=128, **common))
    elif kind == "mistral":  # sliding-window layers (window 5, shorter than the prompts)
        model = T.MistralForCausalLM(T.MistralConfig(intermediate_size=128, sliding_window=5, **common))
    elif kind == "gpt-oss":  # learnable sinks and alternating sliding layers
        model = T.GptOssForCausalLM(T.GptOssConfig(intermediate_size=64, head_dim=16, sliding_window=6,
                                                   num_local_experts=4, num_experts_per_tok=2, **common))
        with torch.no_grad():
            for m in model.modules():
                if hasattr(m, "sinks"):
                    m.sinks.copy_(torch.randn_like(m.sinks) * 2)  # sinks that matter
    else:
        raise ValueError(kind)
    return model.eval()


def ids(b=2, n=24, seed=1):
    return torch.randint(0, VOCAB, (b, n), generator=torch.Generator().manual_seed(seed))


def left_padded(lens, n: int, seed: int):
    """(rows, ids [B, n], attention_mask [B, n]): random sequences of these lengths, left-padded."""
    rows = [ids(1, k, seed=seed + i) for i, k in enumerate(lens)]
    x = torch.zeros(len(lens), n, dtype=torch.long)
    mask = torch.zeros(len(lens), n, dtype=torch.long)
    for i, (r, k) in enumerate(zip(rows, lens)):
        x[i, n - k:], mask[i, n - k:] = r[0], 1
    return rows, x, mask


def additive_mask(p, n: int, b: int):
    """The pattern's dense mask (tests/naive.py, one head) as eager attention's additive 4D mask."""
    allowed = torch.tensor(naive.dense(p.root, n, n, 1, 1)[0])
    return torch.zeros(n, n).masked_fill(~allowed, float("-inf"))[None, None].expand(b, 1, n, n)


def test_logits_equal_eager_attention_under_the_same_dense_mask():
    ref = tiny("llama")
    ours = sdt.apply(copy.deepcopy(ref), STREAMING, backend="reference")
    x = ids()
    with torch.no_grad():
        want = ref(x, attention_mask=additive_mask(STREAMING, x.shape[1], x.shape[0])).logits
        got = ours(x).logits
        plain = ref(x).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (plain - want).abs().max() > 1e-2  # the pattern changed the logits: the mask is checked


@pytest.mark.parametrize("kind", ["llama", "mistral", "gpt-oss"])
def test_greedy_generation_equals_eager_with_dynamic_and_static_caches(kind):
    ref = tiny(kind)
    ours = sdt.apply(copy.deepcopy(ref), CAUSAL, backend="reference")
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(x).logits, ref(x).logits, rtol=1e-5, atol=1e-5)
        want = ref.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for cache in (None, "static"):
            got = ours.generate(x, max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation=cache)
            assert torch.equal(got, want), (kind, cache)


def test_static_cache_steps_give_the_logits_of_the_whole_sequence():
    # a static cache hands the attention all its slots: the unused ones must not be read
    ref = tiny("llama")
    ours = sdt.apply(copy.deepcopy(ref), STREAMING, backend="reference")
    x = ids(n=20)
    cache = T.StaticCache(config=ours.config, max_cache_len=64)
    with torch.no_grad():
        whole = ours(x).logits
        first = ours(x[:, :12], cache=cache, use_cache=True).logits
        rest = [ours(x[:, i:i + 1], cache=cache, use_cache=True,
                     position_ids=torch.tensor([[i]])).logits for i in range(12, 20)]
    torch.testing.assert_close(torch.cat([first, *rest], 1), whole, rtol=1e-5, atol=1e-5)


def test_training_step_gradients_equal_eager_with_the_dense_mask():
    ref = tiny("llama").train()
    ours = sdt.apply(copy.deepcopy(ref), STREAMING, backend="reference")
    x = ids()
    ref(x, labels=x, attention_mask=additive_mask(STREAMING, x.shape[1], x.shape[0])).loss.backward()
    ours(x, labels=x).loss.backward()
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_the_kernels_run_inside_the_model():
    # the generated Triton kernels (the interpreter on CPU), forward and a training step
    ref = tiny("llama").train()
    ours = sdt.apply(copy.deepcopy(ref), STREAMING, backend="triton")
    x = ids(n=20)
    mask = additive_mask(STREAMING, x.shape[1], x.shape[0])
    ref(x, labels=x, attention_mask=mask).loss.backward()
    out = ours(x, labels=x)
    out.loss.backward()
    with torch.no_grad():
        torch.testing.assert_close(out.logits, ref(x, attention_mask=mask).logits, rtol=1e-4, atol=1e-4)
    for (name, a), b in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_per_layer_patterns_list_dict_callable_and_none():
    ref = tiny("llama")
    x = ids()
    with torch.no_grad():
        plain = ref(x).logits
        forms = [[STREAMING, None], {0: STREAMING}, lambda i: STREAMING if i == 0 else None]
        results = [sdt.apply(copy.deepcopy(ref), form, backend="reference")(x).logits for form in forms]
        both = sdt.apply(copy.deepcopy(ref), STREAMING, backend="reference")(x).logits
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=0, atol=0)
    assert (results[0] - plain).abs().max() > 1e-3 and (results[0] - both).abs().max() > 1e-3


def test_sliding_layers_take_shift_invariant_patterns_only_when_decoding():
    ours = sdt.apply(tiny("mistral"), STREAMING, backend="reference")  # sink(2) is not shift-invariant
    with torch.no_grad():
        ours(ids())  # prefill: every key is there, any pattern runs
        with pytest.raises(InputError, match="sliding-window layers"):
            ours.generate(ids(), max_new_tokens=2, do_sample=False, pad_token_id=0)
    assert sdt.shift_invariant(sparsedsl.compile_pattern("pattern w() { causal & (window(4) | dilated(8, 2)) }"))
    assert not sdt.shift_invariant(sparsedsl.compile_pattern("pattern w() { causal & where(q % 2 == 0) }"))


def test_clear_errors():
    model = tiny("llama")
    with pytest.raises(InputError, match="3 patterns for 2 attention layers"):
        sdt.apply(model, [CAUSAL] * 3)
    with pytest.raises(InputError, match="layer indices \\[5\\]"):
        sdt.apply(model, {5: CAUSAL})
    with pytest.raises(InputError, match="compiled pattern"):
        sdt.apply(model, "causal")
    sdt.apply(model, CAUSAL, backend="reference")
    holes = torch.ones(2, 24, dtype=torch.long)
    holes[0, 5:7] = 0  # padding inside a row
    with torch.no_grad(), pytest.raises(InputError, match="padding inside a row"):
        model(ids(), attention_mask=holes)
    right = torch.ones(2, 24, dtype=torch.long)
    right[0, -3:] = 0
    with torch.no_grad(), pytest.raises(InputError, match="generation from a padded batch needs left padding"):
        model.generate(ids(), attention_mask=right, max_new_tokens=2, do_sample=False, pad_token_id=0)
    model.train()
    model.config.attention_dropout = 0.1
    for m in model.modules():
        if hasattr(m, "attention_dropout"):
            m.attention_dropout = 0.1
    with pytest.raises(InputError, match="dropout"):
        model(ids())


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_a_padded_batch_equals_its_rows_alone(side, backend):
    """Logits of a padded batch's real tokens equal each sequence run alone (unpadded), and a
    training step's gradients equal the sum of the sequences' own."""
    model = sdt.apply(tiny("llama").train(), STREAMING, backend=backend)
    n, lens = 14, [14, 9, 3]
    rows = [ids(1, k, seed=10 + i) for i, k in enumerate(lens)]
    x = torch.zeros(len(lens), n, dtype=torch.long)
    mask = torch.zeros(len(lens), n, dtype=torch.long)
    for i, (r, k) in enumerate(zip(rows, lens)):
        span = slice(0, k) if side == "right" else slice(n - k, n)
        x[i, span], mask[i, span] = r[0], 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)  # real tokens count from 0, as generate() does
    out = model(x, attention_mask=mask, position_ids=position_ids)
    got_loss = sum(out.logits[i, (slice(0, k) if side == "right" else slice(n - k, n))].logsumexp(-1).sum()
                   for i, k in enumerate(lens))
    got_loss.backward()
    got_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want_loss = 0
    for i, (r, k) in enumerate(zip(rows, lens)):
        alone = model(r).logits[0]
        span = slice(0, k) if side == "right" else slice(n - k, n)
        torch.testing.assert_close(out.logits[i, span], alone, rtol=1e-4, atol=1e-4)
        want_loss = want_loss + alone.logsumexp(-1).sum()
    want_loss.backward()
    for (name, p), g in zip(model.named_parameters(), got_grads):
        torch.testing.assert_close(g, p.grad, rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_greedy_generation_from_a_left_padded_batch_equals_each_sequence_alone(backend):
    model = sdt.apply(tiny("llama"), STREAMING, backend=backend)
    n = 12
    rows, x, mask = left_padded([12, 8, 3], n, seed=20)
    with torch.no_grad():
        got = model.generate(x, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        for i, r in enumerate(rows):
            alone = model.generate(r, max_new_tokens=6, do_sample=False, pad_token_id=0)
            assert torch.equal(got[i, n:], alone[0, r.shape[1]:]), i


def test_a_dynamic_pattern_on_a_left_padded_batch_equals_each_sequence_alone(monkeypatch):
    """topk + landmarks on a left-padded batch (kernels): the prefill's logits of each row's real
    tokens and its greedy tokens equal the sequence run alone (selection and summaries count
    from each row's first real token), with the summaries kept across the decoding steps."""
    dyn = sparsedsl.compile_pattern("pattern d() { causal & (sink(1) | window(3) | topk(1, block=4) "
                                    "| landmarks(block=4)) }")
    calls = []
    real = sparsedsl.CompiledPattern.summarize
    monkeypatch.setattr(sparsedsl.CompiledPattern, "summarize",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    model = sdt.apply(tiny("llama"), dyn, backend="triton")
    n, lens = 11, [11, 6]
    rows, x, mask = left_padded(lens, n, seed=30)
    with torch.no_grad():
        logits = model(x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
        got = model.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert len(calls) == 2  # once per layer after the prefill, not once per step
        for i, (r, k) in enumerate(zip(rows, lens)):
            torch.testing.assert_close(logits[i, n - k:], model(r).logits[0], rtol=1e-4, atol=1e-4)
            alone = model.generate(r, max_new_tokens=4, do_sample=False, pad_token_id=0)
            assert torch.equal(got[i, n:], alone[0, r.shape[1]:]), i


def test_generation_with_a_dynamic_pattern_keeps_its_summaries_across_steps(monkeypatch):
    """topk decoding on the kernels, with the block summaries kept on each layer (computed once
    per layer after the prefill, refreshed by decode for each new token), gives the tokens of
    the reference backend, which selects from the whole prefix at every step."""
    topk = sparsedsl.compile_pattern("pattern t() { causal & (sink(2) | window(3) | topk(1, block=4)) }")
    calls = []
    real = sparsedsl.CompiledPattern.summarize
    monkeypatch.setattr(sparsedsl.CompiledPattern, "summarize",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    ref = sdt.apply(tiny("llama"), topk, backend="reference")
    ours = sdt.apply(tiny("llama"), topk, backend="triton")
    x = ids(2, 13, seed=5)
    with torch.no_grad():
        want = ref.generate(x, max_new_tokens=7, do_sample=False, pad_token_id=0)
        assert not calls
        got = ours.generate(x, max_new_tokens=7, do_sample=False, pad_token_id=0)
    assert torch.equal(got, want)
    assert len(calls) == 2  # once per layer, not once per step


def test_the_model_under_torch_compile():
    """torch.compile of the whole model: the kernels are one registered op with a fake
    implementation; a second length runs the same compiled model (the mask check is the one
    graph break, as in transformers' own FlashAttention path)."""
    ref = tiny("llama")
    ours = torch.compile(sdt.apply(copy.deepcopy(ref), STREAMING, backend="triton"), backend="aot_eager")
    with torch.no_grad():
        for n, seed in ((20, 1), (27, 3)):
            x = ids(n=n, seed=seed)
            want = ref(x, attention_mask=additive_mask(STREAMING, n, x.shape[0])).logits
            torch.testing.assert_close(ours(x).logits, want, rtol=1e-4, atol=1e-4)
