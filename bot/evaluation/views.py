"""The evaluation's messages as Block Kit: one blind comparison, and a round's results.

Layout only: no Slack calls, no database. A comparison shows the question and both answers without any model name;
its text is bounded so that every comparison fits in one message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot import blocks as bk
from storage.evals import RoundStatus
from storage.models import Comparison
from trainers.evaluation.results import RoundReport, format_p

# Room for the question and two answers inside one message: 3000 characters per section, and Slack refuses
# messages around 13k characters of blocks. Escaping (&amp;) can lengthen text, hence the margin.
QUESTION_LIMIT = 1200
CONTEXT_LIMIT = 800
ANSWER_LIMIT = 2400
VOTE_HINT = (
    "React :a: if *A* is better, :b: if *B* is better, :handshake: for a tie, :-1: if both are bad. "
    "One vote per person: your latest reaction counts; removing it counts another vote reaction you still have, "
    "else withdraws your vote. The models are revealed when voting closes."
)


def blockquote(text: str) -> str:
    """Escaped text as a Slack block quote (the ``>`` markers themselves must stay unescaped)."""
    return "\n".join("> " + line for line in bk.escape(text).splitlines() or [""])


def comparison_message(comparison: Comparison, index: int, total: int) -> tuple[str, list[bk.Block], bool]:
    """(fallback text, blocks, whether anything was shortened) for one blind comparison."""
    question, earlier = _question_and_context(comparison.prompt)
    truncated = False

    def cut(text: str, limit: int) -> str:
        nonlocal truncated
        if len(text) > limit:
            truncated = True
        return bk.truncate(text, limit)

    out = [bk.section(f"*Blind comparison {index} of {total}* — which answer is better?")]
    if earlier:
        out.append(bk.context(blockquote(cut(earlier, CONTEXT_LIMIT))))
    out.append(bk.section("*Customer:*\n" + blockquote(cut(question, QUESTION_LIMIT))))
    out.append(bk.divider())
    out.append(bk.section(":a: *Answer A*\n" + bk.escape(cut(comparison.answer_a, ANSWER_LIMIT))))
    out.append(bk.divider())
    out.append(bk.section(":b: *Answer B*\n" + bk.escape(cut(comparison.answer_b, ANSWER_LIMIT))))
    hint = VOTE_HINT + (" The full texts are in the thread." if truncated else "")
    out.append(bk.context(hint))
    text = (f"Blind comparison {index} of {total}: which answer is better? React :a: :b: :handshake: or :-1:. "
            + bk.escape(bk.truncate(question, 200)))
    # 8 blocks at most and bounded text (the limits above): within Slack's limits by construction.
    return bk.fallback(text), out, truncated


def full_comparison_text(comparison: Comparison, index: int) -> str:
    """A comparison without any shortening, as a text file attached to its message when the message was cut."""
    question, earlier = _question_and_context(comparison.prompt)
    parts = [f"Blind comparison {index}", ""]
    if earlier:
        parts += ["Earlier in the conversation:", earlier, ""]
    parts += ["Customer:", question, "", "Answer A:", comparison.answer_a, "", "Answer B:", comparison.answer_b, ""]
    return "\n".join(parts)


def _question_and_context(prompt: list[dict[str, Any]]) -> tuple[str, str]:
    turns = [m for m in prompt if m.get("role") in ("user", "assistant")]
    question = _content(turns[-1]) if turns else ""
    labels = {"user": "Customer", "assistant": "Agent"}
    earlier = "\n".join(f"{labels[m['role']]}: {_content(m)}" for m in turns[-5:-1])
    return question, earlier


def _content(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content or "")


def results_blocks(report: RoundReport, *, note: str | None = None,
                   name_of: Callable[[str], str] = str) -> tuple[str, list[bk.Block]]:
    """(fallback text, blocks) of a round's results; `name_of` turns a voter's user ID into a name."""
    lines = report.lines(name_of)
    s = report.summary
    if s.win_rate is None:
        still_open = report.round.status in RoundStatus.VOTABLE
        headline = f"Round #{report.round.id}: no decisive votes" + (" yet" if still_open else "")
    else:
        subject = report.candidate if report.revealed else "the candidate"
        headline = (f"Round #{report.round.id}: {subject} wins {s.win_rate:.1%} of decisive votes "
                    f"(95% CI {s.ci.low:.1%}–{s.ci.high:.1%}, {format_p(s.p_value)}) — {s.verdict}")
    out = [bk.header(bk.truncate(headline, bk.MAX_HEADER_TEXT))]
    body: list[str] = []
    leaderboard: list[str] = []
    in_board = False
    for line in lines:
        if line.startswith("Leaderboard across"):
            in_board = True
        (leaderboard if in_board else body).append(line)
    out.append(bk.section("\n".join(bk.escape(line) for line in body)))
    if leaderboard:
        out.append(bk.section("*" + bk.escape(leaderboard[0]) + "*\n" + "\n".join(bk.escape(entry.strip()) for entry in leaderboard[1:])))
    if note:
        out.append(bk.context(note))
    return bk.fallback(bk.escape(headline)), bk.fit_blocks(out)
