"""Hugging Face transformers: run a model's attention layers through sparsedsl patterns.

    import sparsedsl
    from sparsedsl.integrations import transformers as sdt

    model = AutoModelForCausalLM.from_pretrained(...)
    sdt.apply(model, sparsedsl.compile_pattern("patterns/streaming_llm.attn", sink=4, window=1024))

`apply` registers an attention function and a mask function with transformers'
`AttentionInterface` and `AttentionMaskInterface` under the name "sparsedsl" and switches
the model to it. The mask function builds no mask: it checks that the model asks for a
causal or sliding-window causal mask and, for a padded batch, hands the layers each row's
length and the padding side. Each attention layer then runs its pattern:

- prefill and training (as many keys as queries): the pattern's call, with its backward; a
  left- or right-padded batch through q_lengths / kv_lengths (each row on its own, no mask);
- generation with a cache (`DynamicCache`, `StaticCache`: more keys than queries): `decode`,
  each sequence's key count the last query's position + 1 (from `position_ids`, a device
  tensor: no host synchronisation), so the queries sit at their true positions and a
  static cache's unused slots are never read;
- the model's scale (`module.scaling`), GQA, learnable sinks (`s_aux`, gpt-oss), and its
  sliding-window layers (the pattern intersected with `window(W)`).

A dynamic pattern's block summaries stay on each layer from one decoding step to the next
(`decode` refreshes the blocks of the step's new keys). Generation from a left-padded batch
(DynamicCache, full-attention layers) runs `decode` with
each row's first real slot as `cache_leftpad`. Not yet: generation from a padded batch with
sliding-window layers or a StaticCache, padding inside a row and packed-sequence masks (each
raises an InputError instead of giving wrong rows); attention dropout other than 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..errors import InputError

NAME = "sparsedsl"


def apply(model, patterns, *, backend: str = "auto"):
    """Run `model`'s attention layers through sparsedsl. `patterns`: one compiled pattern
    for every layer, a list with one per layer, a dict {layer index: pattern} or a
    callable layer index -> pattern; a layer given None (or left out of the dict) keeps
    the model's own attention, computed by sparsedsl (`causal`, intersected with the
    layer's sliding window). Returns the model."""
    from transformers import AttentionInterface, AttentionMaskInterface

    from ..runtime.pattern import CompiledPattern

    layers = _attention_layers(model)
    if not layers:
        raise InputError("apply: found no attention layers (modules with a layer_idx and a scaling) in the model")
    pick = (lambda i: patterns) if patterns is None or isinstance(patterns, CompiledPattern) \
        else _picker(patterns, len(layers))
    for idx, module in layers.items():
        p = pick(idx)
        if p is not None and not isinstance(p, CompiledPattern):
            raise InputError(f"apply: the pattern of layer {idx} must be a compiled pattern "
                             f"(sparsedsl.compile_pattern(...)) or None, got {type(p).__name__}")
        module._sparsedsl = (p, backend)
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, layer_mask)
    model.set_attn_implementation(NAME)
    return model


def _attention_layers(model) -> dict:
    out = {}
    for m in model.modules():
        idx = getattr(m, "layer_idx", None)
        if isinstance(idx, int) and hasattr(m, "scaling") and hasattr(m, "config"):
            out[idx] = m
    return dict(sorted(out.items()))


def _picker(patterns, n: int):
    if isinstance(patterns, (list, tuple)):
        if len(patterns) != n:
            raise InputError(f"apply: {len(patterns)} patterns for {n} attention layers (one per layer, or a dict)")
        return lambda i: patterns[i]
    if isinstance(patterns, dict):
        bad = [i for i in patterns if not isinstance(i, int) or not 0 <= i < n]
        if bad:
            raise InputError(f"apply: layer indices {bad} are not among the model's {n} attention layers")
        return patterns.get
    if callable(patterns):
        return patterns
    raise InputError(f"apply: patterns must be a compiled pattern, a list, a dict or a callable, "
                     f"got {type(patterns).__name__}")


# -- the mask function: no dense mask ------------------------------------------------------

@dataclass(frozen=True)
class Padding:
    """What the mask function hands the layers for a padded batch: each row's real tokens
    (int32 [B], on the device), where the padding is ("left" or "right") and each row's
    first real slot (int32 [B])."""

    lengths: torch.Tensor
    side: str
    starts: torch.Tensor


def layer_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
               **kwargs):
    """transformers' mask interface. The model's mask must be causal or sliding-window causal
    (the window reaches the layer as its `sliding_window`). No dense mask is built: None
    without padding, else a Padding (each row's length and the padding side) that the layers
    pass to the call as q_lengths / kv_lengths. The 2D mask is read once per forward (as
    transformers' FlashAttention path does): its real tokens must be one run at the start or
    the end of every row."""
    _check_mask_function(mask_function)
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2:
        raise InputError("sparsedsl: the transformers integration takes a 2D attention mask (padding) only")
    m = attention_mask[:, -kv_length:].bool()
    if bool(m.all()):
        return None
    lengths = m.sum(-1, dtype=torch.int32)
    at = torch.arange(m.shape[1], device=m.device)
    left, right = at[None, :] >= m.shape[1] - lengths[:, None], at[None, :] < lengths[:, None]
    for side, real in (("left", left), ("right", right)):
        if bool((m == real).all()):
            return Padding(lengths, side, m.shape[1] - lengths if side == "left" else torch.zeros_like(lengths))
    if q_length != m.shape[1]:  # decoding: new tokens after right padding
        raise InputError("sparsedsl: generation from a padded batch needs left padding (tokenizer padding_side="
                         "'left'); the attention mask has padding inside a row")
    raise InputError("sparsedsl: the attention mask has padding inside a row (not one run of real tokens at the "
                     "start or the end of each row): pack the sequences with cu_seqlens instead")


def _check_mask_function(fn) -> None:
    """Accept transformers' causal mask function and its sliding-window causal one (the window
    itself reaches the layer as `sliding_window`); refuse anything else (packed sequences,
    chunked or bidirectional masks)."""
    from transformers import masking_utils as mu

    if fn is None or fn is mu.causal_mask_function:
        return
    if getattr(fn, "__qualname__", "") == "and_masks.<locals>.and_mask" and fn.__closure__:
        rest = [f for f in fn.__closure__[0].cell_contents if f is not mu.causal_mask_function]
        if len(rest) == 1 and getattr(rest[0], "__qualname__", "") == "sliding_window_overlay.<locals>.inner_mask":
            return
    raise InputError(f"sparsedsl: the model asks for a mask the transformers integration does not know "
                     f"({getattr(fn, '__qualname__', fn)}): causal and sliding-window causal masks only (packed "
                     "sequences and chunked or bidirectional masks are not supported yet)")


# -- the attention function ----------------------------------------------------------------

_RELATIVE = {"full", "none", "causal", "window", "band", "dilated"}  # atoms that depend on q - k only


def shift_invariant(p) -> bool:
    """Whether the pattern sees the same keys when every position moves by the same amount:
    built from atoms of q - k only (and head switches), with constant arguments; no `where`."""
    from ..ir import nodes as ir

    for n in ir.post_order(p.root):
        if isinstance(n, ir.Atom) and n.kind not in _RELATIVE:
            return False
        if isinstance(n, ir.Sym) and n.name in ("q", "k"):
            return False
    return True


_WINDOWED: dict = {}


def _pattern(p, window: int | None):
    """The layer's pattern (None: the model's own, causal), intersected with its sliding window."""
    import sparsedsl
    from ..builder import Mask

    if p is not None and window is None:
        return p
    hit = _WINDOWED.get((p, window))
    if hit is None:
        body = sparsedsl.causal if p is None else Mask(p.root.body)
        name = "model" if p is None else p.name
        if window is not None:
            body, name = body & sparsedsl.window(window), f"{name}_window{window}"
        hit = _WINDOWED[(p, window)] = sparsedsl.compile_pattern(body, pattern=name)
    return hit


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, s_aux=None, sliding_window=None,
              position_ids=None, **kwargs):
    """transformers' attention interface: query [B, H, Lq, D], key/value [B, Hk, Lk, D] (the
    cache's keys, for a static cache all its slots); returns ([B, Lq, H, Dv], None)."""
    if dropout:
        raise InputError(f"sparsedsl: attention dropout {dropout} is not supported (set the model's "
                         "attention_dropout to 0, or call model.eval())")
    if attention_mask is not None and not isinstance(attention_mask, Padding):
        raise InputError("sparsedsl: this layer got an attention mask; apply() sets the mask function too "
                         "(do not change the model's attn_implementation afterwards)")
    given, backend = getattr(module, "_sparsedsl", (None, "auto"))
    p = _pattern(given, sliding_window)
    lq, lk = query.shape[2], key.shape[2]
    if lq == lk:  # a prefill: a new sequence, whose decoding summarises its own cache
        module._sparsedsl_summaries = None
    if isinstance(attention_mask, Padding) and lq == lk:
        n = attention_mask.lengths.to(query.device)
        out = p(query, key, value, scale=scaling, sinks=s_aux, backend=backend, q_lengths=n, kv_lengths=n,
                padding_side=attention_mask.side)
    elif isinstance(attention_mask, Padding):
        # generation from a left-padded batch: row b's keys are the cache slots from its first real
        # token on (cache_leftpad), as many as its last query's position + 1
        if attention_mask.side != "left" or sliding_window is not None or position_ids is None:
            raise InputError("sparsedsl: generation from a padded batch needs left padding, full-attention layers "
                             f"(layer {getattr(module, 'layer_idx', '?')}: sliding window {sliding_window}) and the "
                             "layers' position_ids; generate one sequence at a time otherwise")
        starts = attention_mask.starts.to(device=query.device).contiguous()
        n = position_ids[..., -1].to(device=query.device, dtype=torch.int32) + 1
        lens = torch.clamp(starts + n, max=lk).contiguous()
        key, value = key.contiguous(), value.contiguous()
        summaries = _summaries(module, p, key, value, lens, lq, starts) if _kept(p, backend, query) else None
        out = p.decode(query, key, value, lens, scale=scaling, sinks=s_aux, backend=backend,
                       cache_leftpad=starts, summaries=summaries)
    elif lq == lk:
        out = p(query, key, value, scale=scaling, sinks=s_aux, backend=backend)
    else:
        # a cache: n = the last query's position + 1 keys so far. A full-attention layer's cache
        # holds them in its first n slots. A sliding-window layer's holds the most recent ones
        # in order (at most its capacity): their positions start at n - (slots used), a shift
        # that only a translation-invariant pattern (the model's own window) does not see.
        if position_ids is None:
            raise InputError("sparsedsl: decoding with a cache needs the layers' position_ids")
        n = position_ids[..., -1].to(device=query.device, dtype=torch.int32) + 1
        if sliding_window is not None:
            if given is not None and not shift_invariant(given):
                raise InputError(f"sparsedsl: layer {getattr(module, 'layer_idx', '?')} is one of the model's "
                                 f"sliding-window layers (window {sliding_window}); its cache keeps only the last "
                                 "keys, so decoding there needs a pattern that only looks at distances q - k "
                                 "(causal, window, band, dilated, full): give this layer one, or None")
            n = torch.clamp(n, max=lk)
        lens = n.expand(query.shape[0]).contiguous()
        key, value = key.contiguous(), value.contiguous()
        summaries = _summaries(module, p, key, value, lens, lq) if _kept(p, backend, query) else None
        out = p.decode(query, key, value, lens, scale=scaling, sinks=s_aux, backend=backend, summaries=summaries)
    return out.transpose(1, 2), None


def _kept(p, backend: str, query) -> bool:
    """Whether a layer keeps block summaries: a dynamic pattern decoding on the kernels."""
    kernels = backend == "triton" or (backend == "auto" and query.is_cuda and query.dtype != torch.float64)
    return p.is_dynamic and kernels


def _summaries(module, p, key, value, lens, new: int, leftpad=None):
    """A dynamic pattern's block summaries of this layer's cache, kept on the layer from one
    decoding step to the next: decode() refreshes only the blocks of the step's new keys. They
    are computed whole (one pass over the cache) on the first step after a prefill, or when
    the cache is not the last one grown by `new` keys (a DynamicCache's tensor grows by the new
    keys; a StaticCache's stays the same tensor); a grown cache's new blocks are appended.
    `leftpad`: a left-padded batch's first real slots (its blocks count from there)."""
    kept: _Kept | None = getattr(module, "_sparsedsl_summaries", None)
    cap = key.shape[2]
    same = kept is not None and kept.pattern is p and kept.batch_heads == key.shape[:2] and (
        (kept.capacity == cap and kept.pointer == key.data_ptr()) or kept.capacity + new == cap)
    if not same:
        summ = p.summarize(key, value, lens, cache_leftpad=leftpad)
    else:
        summ = kept.summaries
        if summ.topk is not None:
            summ.topk = _grown(summ.topk, p.plan.topk.block, cap)
        if summ.landmarks is not None:
            summ.landmarks = _grown(summ.landmarks, p.plan.landmarks, cap)
    module._sparsedsl_summaries = _Kept(p, summ, key.shape[:2], cap, key.data_ptr())
    return summ


class _Kept(NamedTuple):
    """A layer's summaries and the cache they describe."""

    pattern: object
    summaries: object
    batch_heads: tuple
    capacity: int
    pointer: int


def _grown(tensors, block: int, cap: int):
    """Summary tensors [B, Hk, blocks, D] with room for `cap` keys (new blocks zero: decode()
    fills those its new keys touch, the only keys they hold)."""
    blocks = -(-cap // block)
    return tuple(t if t.shape[2] >= blocks else torch.nn.functional.pad(t, (0, 0, 0, blocks - t.shape[2]))
                 for t in tensors)
