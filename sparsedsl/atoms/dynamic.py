"""The data-dependent atoms: which keys they add depends on q and k, so they
have no condition; passes/dynamic.py splits them from the static part of a
pattern and the kernels read their selection (kernels/selection.py), their
landmark entries and their compensation entries (kernels/prefix.py)."""
from __future__ import annotations

from ..ir import nodes as ir
from dataclasses import dataclass

from .base import AtomDef, Call, Param, int_param
from .segments import EVERY_QUERY, EVERYTHING


class Landmarks(AtomDef):
    name, dynamic = "landmarks", True
    params = (int_param("block", 64, 1, constant=True),)
    formula = "one mean key/value per complete key block j, seen when j < q // block"

    def segments(self, a, rate):  # no ordinary key
        return ()

    def query_segments(self, a, rate):
        return ()


@dataclass(frozen=True)
class AttentionScore(Call):
    """topk's score=attention(window=w, pool=p) (SnapKV): a key block scores by the softmax
    probabilities the call's last min(w, Lq) queries give its keys under full causal attention,
    summed over those queries, max-pooled over p neighbouring keys and maximised over the block
    (reference/select.py attention_block_scores; docs/language.md states it exactly)."""

    name = "attention"
    window: int
    pool: int


class TopK(AtomDef):
    name, dynamic = "topk", True
    params = (int_param("n", minimum=1, constant=True), int_param("block", 64, 1, constant=True),
              Param("score", "choice", "mean", choices=("mean", "minmax", "given"), calls=(AttentionScore,)),
              Param("causal", "bool", ir.Bool(True)))
    formula = "the n best-scoring key blocks of each query block"

    def segments(self, a, rate):  # (split off before planning; any key may be selected)
        return EVERYTHING

    def query_segments(self, a, rate):
        return EVERY_QUERY


class Compensation(AtomDef):
    """RazorAttention's compensation token. In a head branch  C & (S1 | ... | Sn | compensation())
    (or C & compensation()), the query at q sees one extra entry whose key and value are the
    means of the keys and values of C & ~(S1 | ... | Sn) at q: the keys its static part hides.
    None when no key is hidden. ir/compensation.py finds those keys as one span per query."""

    name, dynamic = "compensation", True
    formula = "one entry: the mean key/value of the keys the static operands of its union hide"

    def segments(self, a, rate):  # no ordinary key
        return ()

    def query_segments(self, a, rate):
        return ()


DEFINITIONS = (Landmarks(), TopK(), Compensation())
