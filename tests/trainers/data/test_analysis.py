"""The line analyzer's fast path gives the same rows as its general path."""

from __future__ import annotations

import json

from tests.fixtures.paths import REPO
from tests.fixtures.records import BAD_LINES, WEIGHTED_LINE, conversation, varied_lines
from trainers.data.analysis import LineAnalyzer


def test_fast_path_gives_the_same_rows_as_the_general_path() -> None:
    analyzer = LineAnalyzer("gpt-4o-mini", "auto", True, "test", 65536)
    sample = [json.loads(line) for line in (REPO / "bot" / "data" / "sample.jsonl").read_text().splitlines()]
    lines = varied_lines(20) + sample + [
        WEIGHTED_LINE,
        conversation("Is it fixed?", "Yes, fixed."),
        conversation("I'm dana@example.com, call +1 415 555 0134", "Thanks Dana, I will call you today at that number.", system=None),
        {"messages": [{"role": "system", "content": "card 4111 1111 1111 1111"},
                      {"role": "assistant", "content": "Welcome back to Acme support, friend."}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there my friend", "weight": 0}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there my friend", "weight": True}]},
        {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "hello there my friend"}]},
        {"messages": [{"role": "system", "content": "a"}, {"role": "system", "content": "b"},
                      {"role": "assistant", "content": "hello there my friend"}]},
    ] + [value for value, _, _ in BAD_LINES]
    fast_hits = 0
    for number, line in enumerate(lines, start=1):
        text = json.dumps(line)
        fast_tokens: list[int] = []
        general_tokens: list[int] = []
        fast = analyzer.fast_row(number, line, fast_tokens, text)
        general = analyzer.general_row(number, line, general_tokens, text)
        if fast is None:
            assert fast_tokens == []  # a refused line leaves nothing behind
            continue
        fast_hits += 1
        assert fast == general, line
        assert fast_tokens == general_tokens
    assert fast_hits >= 60
