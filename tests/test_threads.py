"""Thread safety: work done from several threads at once."""
from __future__ import annotations

import threading

import pytest

from sparsedsl.errors import PatternError
from sparsedsl.language.parser import parse


def test_parse_errors_quote_their_own_source():
    # the parser is shared; each error must still name and quote the source it came from
    def source(i: int) -> str:
        if i % 2:  # the post-lexer's nesting error
            return f"pattern p{i}() {{ " + "(" * 101 + f"window({i})" + ")" * 101 + " }"
        return f"pattern p{i}() {{ window({i}) & & }}"  # the parser's unexpected token

    wrong, start = [], threading.Barrier(6)

    def work(t: int) -> None:
        start.wait()
        for n in range(150):
            i = t * 1000 + n % 2
            with pytest.raises(PatternError) as e:
                parse(source(i), f"thread{i}.attn")
            span = e.value.span
            if span is None or span.source.name != f"thread{i}.attn" or span.source.text != source(i):
                wrong.append((i, str(e.value)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not wrong, f"{len(wrong)} of 900 errors quote another source, e.g. {wrong[0]}"
