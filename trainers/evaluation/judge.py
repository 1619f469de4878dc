"""An optional LLM judge for evaluation rounds (OpenAI chat completions).

Each comparison is judged twice, with the answers in both orders; LLM judges favour a position, so a verdict that
flips with the order counts as a tie (MT-Bench). Verdicts are stored per comparison and judge model, and the
report compares them with the human votes (GPT-4-class judges agree with people ~80–85% of the time).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storage.config import DEFAULT_OPENAI_MAX_RETRIES
from storage.db import Database
from storage.evals import round_comparisons, save_verdict
from storage.models import Comparison, stored_id
from storage.votes import VoteChoice
from trainers.data.pii import redact
from trainers.data.pricing import PriceTable
from trainers.evaluation.inference import CostEstimate, GenerationError, GenerationSettings, estimate_openai_cost
from trainers.training.openai_backend import make_client

if TYPE_CHECKING:
    from openai import OpenAI
    from openai.types.chat import ChatCompletionMessageParam

JUDGE_MAX_TOKENS = 400  # per judgement: a short explanation and the [[…]] marker

SYSTEM = (
    "You are an impartial judge of customer-support replies. Compare two replies to the same conversation. "
    "Judge accuracy, helpfulness, tone and brevity; ignore which reply comes first and how long it is. "
    "Explain briefly, then end with exactly one of: [[1]] if reply 1 is better, [[2]] if reply 2 is better, "
    "[[tie]] if they are equally good or equally bad."
)
_VERDICT = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.IGNORECASE)
# The judge's marker → the side it prefers, with the answers in their shown order (A first) and swapped (B first).
_SIDE_WITH_A_FIRST = {"1": VoteChoice.A, "2": VoteChoice.B, "tie": VoteChoice.TIE}
_SIDE_WITH_B_FIRST = {"1": VoteChoice.B, "2": VoteChoice.A, "tie": VoteChoice.TIE}


@dataclass(frozen=True)
class JudgeRun:
    judge_model: str
    judged: int
    consistent: int  # both orders agreed
    verdicts: dict[int, VoteChoice]  # comparison id → A, B or tie


def _conversation(prompt: list[dict[str, Any]]) -> str:
    lines = []
    for message in prompt:
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
        lines.append(f"{message.get('role', 'user')}: {content or ''}")
    return "\n".join(lines)


def parse_verdict(text: str) -> str | None:
    """"1", "2" or "tie" from the judge's last ``[[…]]`` marker; None when it gave none."""
    found = _VERDICT.findall(text or "")
    return found[-1].lower() if found else None


def judge_messages(prompt: list[dict[str, Any]], first: str, second: str) -> list[ChatCompletionMessageParam]:
    """The chat messages of one judgement (what is sent, and what the cost estimate counts)."""
    # Conversations and answers may quote customers: personal data is redacted before it leaves the premises.
    user = redact(
        f"Conversation so far:\n{_conversation(prompt)}\n\n"
        f"[Reply 1]\n{first}\n[End of reply 1]\n\n[Reply 2]\n{second}\n[End of reply 2]"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _ask(client: OpenAI, model: str, prompt: list[dict[str, Any]], first: str, second: str) -> tuple[str | None, str]:
    try:
        response = client.chat.completions.create(
            model=model, temperature=0, seed=0, max_completion_tokens=JUDGE_MAX_TOKENS,
            messages=judge_messages(prompt, first, second),
        )
    except Exception as error:
        message = getattr(error, "message", None) or str(error)
        raise GenerationError(
            f"the judge model {model} could not answer: {message}. Check OPENAI_API_KEY and the model name (FTBOT_JUDGE_MODEL)."
        ) from error
    text = response.choices[0].message.content or ""
    return parse_verdict(text), text


def judge_comparison(client: OpenAI, model: str, comparison: Comparison) -> tuple[VoteChoice, dict[str, Any]]:
    """(A, B or tie, detail) from two judgements with the answers swapped."""
    forward, forward_text = _ask(client, model, comparison.prompt, comparison.answer_a, comparison.answer_b)
    backward, backward_text = _ask(client, model, comparison.prompt, comparison.answer_b, comparison.answer_a)
    first = _SIDE_WITH_A_FIRST.get(forward) if forward is not None else None
    second = _SIDE_WITH_B_FIRST.get(backward) if backward is not None else None
    choice = first if first is not None and first == second else VoteChoice.TIE
    detail = {
        "a_first": first, "b_first": second, "consistent": first is not None and first == second,
        "a_first_text": forward_text[-1500:], "b_first_text": backward_text[-1500:],
    }
    return choice, detail


def judgeable_comparisons(db: Database, round_id: int) -> list[Comparison]:
    """The round's comparisons with both answers: the ones the judge reads."""
    return [c for c in round_comparisons(db, round_id) if c.answer_a and c.answer_b]


def estimate_judge_cost(db: Database, round_id: int, model: str, *, prices: PriceTable | None = None) -> CostEstimate:
    """What judging the round costs at most: both orders of every comparison, their exact prompts' tokens, and
    the full output allowance of each call (the judge's explanation has no typical length to go by)."""
    calls = [
        judge_messages(c.prompt, first, second)
        for c in judgeable_comparisons(db, round_id)
        for first, second in ((c.answer_a, c.answer_b), (c.answer_b, c.answer_a))
    ]
    return estimate_openai_cost(model, calls, GenerationSettings(max_new_tokens=JUDGE_MAX_TOKENS),
                                expected_answer_tokens=JUDGE_MAX_TOKENS, prices=prices)


def judge_round(
    db: Database,
    round_id: int,
    *,
    model: str,
    client: OpenAI | None = None,
    concurrency: int = 4,
    progress: Callable[[int, int], None] | None = None,
    max_retries: int = DEFAULT_OPENAI_MAX_RETRIES,
) -> JudgeRun:
    """Judge every answered comparison of a round and store the verdicts."""
    openai_client = make_client(client, max_retries=max_retries)
    comparisons = judgeable_comparisons(db, round_id)
    done = 0

    def one(comparison: Comparison) -> tuple[int, VoteChoice, dict[str, Any]]:
        nonlocal done
        comparison_id = stored_id(comparison)
        choice, detail = judge_comparison(openai_client, model, comparison)
        save_verdict(db, comparison_id, model, choice, detail)
        done += 1
        if progress is not None:
            progress(done, len(comparisons))
        return comparison_id, choice, detail

    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ftbot-judge") as pool:
        results = list(pool.map(one, comparisons))
    return JudgeRun(
        judge_model=model,
        judged=len(results),
        consistent=sum(1 for _, _, detail in results if detail["consistent"]),
        verdicts={cid: choice for cid, choice, _ in results},
    )
