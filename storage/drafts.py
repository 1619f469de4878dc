"""Reply drafts: what the model in use wrote for an agent, what the agent did with it, and the training data that made.

Data access only (no Slack). Every decision is a conditional claim on the draft, so a double click, a Slack retry
or two bots acting on one draft act once:

- Sent as is: the posted text is the draft (an example too with ``FTBOT_DRAFTS_SENT_AS_EXAMPLES``).
- Edited: a pending example (the prompt and the agent's text) and a preference pair (the agent's text over the draft).
- Discarded: the reason, if given; the agent's own reply in the thread soon after becomes a preference pair
  (:func:`record_agent_reply`).
- Expired: nobody decided within ``FTBOT_DRAFT_EXPIRE_HOURS`` (:func:`expire_drafts`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from storage.db import Database
from storage.errors import DraftNotFound, DuplicateExample, ValidationFailed
from storage.eval_prompts import prompt_hash
from storage.examples import BATCH_SIZE, SaveResult, save_capture
from storage.models import PreferencePair, ReplyDraft, stored_id, utcnow
from storage.pairs import add_pair, normalize_pair
from storage.records import content_hash, dpo_record
from storage.vocabulary import DraftOutcome, ExampleSource, PairSource
from storage.workspace_settings import get_setting, set_setting

__all__ = [
    "create_draft", "find_draft", "get_draft", "set_draft_timing", "decide_draft", "store_missing_training_data",
    "record_agent_reply",
    "expire_drafts", "list_drafts", "set_channel_drafts", "channel_drafts_on", "draft_source_key",
    "AUTO_DRAFTS_PREFIX", "DraftFact", "draft_facts",
]

# The settings key of a channel's auto mode (``/ft drafts on``): AUTO_DRAFTS_PREFIX + channel id.
AUTO_DRAFTS_PREFIX = "drafts_auto:"


def draft_source_key(draft_id: int) -> str:
    """The ``Example.source_key`` of the example a draft became: deciding a draft twice stores one example."""
    return f"draft:{draft_id}"


def create_draft(
    db: Database,
    *,
    request_key: str,
    channel: str,
    thread_ts: str,
    source_ts: str,
    requested_by: str,
    model: str,
    backend: str,
    prompt: Sequence[dict[str, Any]],
    draft: str,
    latency_ms: int | None = None,
    generation_ms: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cost_usd: float | None = None,
) -> SaveResult[ReplyDraft]:
    """Store a draft; a request already stored under ``request_key`` returns its draft with ``created=False``.

    Slack delivers a request more than once (retries, a second bot); each delivery that gets here finds one draft.
    """
    if not request_key.strip():
        raise ValidationFailed("a draft needs a request key (what makes a Slack request idempotent)")
    messages = [dict(message) for message in prompt]
    return SaveResult(*db.get_or_insert(col(ReplyDraft.request_key), request_key, lambda _session: ReplyDraft(
        request_key=request_key, channel=channel, thread_ts=thread_ts, source_ts=source_ts, requested_by=requested_by,
        model=model, backend=backend, prompt=messages, prompt_hash=prompt_hash(messages), draft=draft,
        latency_ms=latency_ms, generation_ms=generation_ms, prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens, cost_usd=cost_usd,
    )))


def find_draft(db: Database, request_key: str) -> ReplyDraft | None:
    """The draft stored for a request, or None."""
    with db.session() as session:
        return session.scalar(select(ReplyDraft).where(col(ReplyDraft.request_key) == request_key))


def get_draft(db: Database, draft_id: int) -> ReplyDraft:
    """The draft with this id; raises ``DraftNotFound``."""
    with db.session() as session:
        draft = session.get(ReplyDraft, draft_id)
        if draft is None:
            raise DraftNotFound(draft_id)
        return draft


def set_draft_timing(db: Database, draft_id: int, *, latency_ms: int) -> None:
    """Record how long the agent waited, from the request to the draft shown (known only once it was shown)."""
    with db.session() as session:
        if session.exec(update(ReplyDraft).where(col(ReplyDraft.id) == draft_id)
                        .values(latency_ms=latency_ms)).rowcount != 1:
            raise DraftNotFound(draft_id)


def decide_draft(
    db: Database,
    draft_id: int,
    outcome: DraftOutcome,
    *,
    by: str,
    final_text: str | None = None,
    reason: str | None = None,
    posted_ts: str | None = None,
    sent_as_example: bool = False,
) -> ReplyDraft | None:
    """Record the agent's decision, if nobody decided this draft before; None when someone (or something) did.

    One conditional UPDATE (only while ``outcome`` is NULL) is the claim: of eight clicks at once exactly one acts.
    ``EDITED`` needs ``final_text``; one equal to the draft (the agent opened the editor and sent it unchanged) is
    stored as ``SENT``. The winner then stores the training data: for an edit a pending example (the prompt and the
    agent's text, ``source_key`` ``draft:<id>``) and a preference pair (the agent's text over the draft); for a
    draft sent as is, with ``sent_as_example``, a pending example. Returns the draft as stored afterwards.
    Raises ``DraftNotFound`` for an id no draft has, ``ValidationFailed`` for an edit without text and for
    ``EXPIRED`` (only :func:`expire_drafts` expires drafts).
    """
    outcome = DraftOutcome(outcome)
    if outcome is DraftOutcome.EXPIRED:
        raise ValidationFailed("drafts expire on their own (expire_drafts); an agent sends, edits or discards")
    if outcome is DraftOutcome.EDITED and not (final_text or "").strip():
        raise ValidationFailed("an edited draft needs the text that was posted")
    stored = get_draft(db, draft_id)
    values: dict[str, Any] = {"decided_by": by, "decided_at": utcnow(), "posted_ts": posted_ts}
    if outcome is DraftOutcome.EDITED and final_text is not None and final_text.strip() == stored.draft.strip():
        outcome = DraftOutcome.SENT  # nothing changed: it counts as accepted as is, and makes no pair
    if outcome is DraftOutcome.SENT:
        values["final_text"] = stored.draft
    elif outcome is DraftOutcome.EDITED:
        values["final_text"] = final_text
    else:
        values["discard_reason"] = (reason or "").strip() or None
    values["outcome"] = outcome
    claim = (update(ReplyDraft)
             .where(col(ReplyDraft.id) == draft_id, col(ReplyDraft.outcome).is_(None))
             .values(**values))
    with db.session() as session:
        if session.exec(claim).rowcount != 1:
            return None
    return _store_training_data(db, get_draft(db, draft_id), sent_as_example=sent_as_example)


def _store_training_data(db: Database, decided: ReplyDraft, *, sent_as_example: bool) -> ReplyDraft:
    """The example (and for an edit the preference pair) a decided draft becomes, linked on the draft. Idempotent:
    the example is found again by its source key and the pair by its content, so a repair can run it again."""
    links: dict[str, Any] = {}
    if decided.example_id is None and (decided.outcome == DraftOutcome.EDITED
                                       or (decided.outcome == DraftOutcome.SENT and sent_as_example)):
        links["example_id"] = _store_example(db, decided)
    if decided.pair_id is None and decided.outcome == DraftOutcome.EDITED:
        assert decided.final_text is not None
        record = _preference(decided, decided.final_text)
        links["pair_id"] = stored_id(add_pair(db, record, source_kind=PairSource.DRAFT_EDIT).pair)
    if not links:
        return decided
    with db.session() as session:
        session.exec(update(ReplyDraft).where(col(ReplyDraft.id) == stored_id(decided)).values(**links))
    return get_draft(db, stored_id(decided))


def store_missing_training_data(db: Database, *, sent_as_example: bool = False) -> int:
    """Store the training data of decided drafts that lack it — a process that died between the claim and the data
    writes of :func:`decide_draft` left them so. Run by the bot's housekeeping; returns how many drafts it completed."""
    query = select(ReplyDraft).where(col(ReplyDraft.outcome) == DraftOutcome.EDITED,
                                     or_(col(ReplyDraft.example_id).is_(None), col(ReplyDraft.pair_id).is_(None)))
    if sent_as_example:
        query = select(ReplyDraft).where(
            or_(and_(col(ReplyDraft.outcome) == DraftOutcome.EDITED,
                     or_(col(ReplyDraft.example_id).is_(None), col(ReplyDraft.pair_id).is_(None))),
                and_(col(ReplyDraft.outcome) == DraftOutcome.SENT, col(ReplyDraft.example_id).is_(None))))
    with db.session() as session:
        incomplete = list(session.scalars(query))
    for draft in incomplete:
        _store_training_data(db, draft, sent_as_example=sent_as_example)
    return len(incomplete)


def _store_example(db: Database, draft: ReplyDraft) -> int:
    """The pending example a decided draft becomes (its prompt, then the posted text); the id of the stored one."""
    record = {"messages": [*draft.prompt, {"role": "assistant", "content": draft.final_text}]}
    try:
        result = save_capture(
            db, record=record, source_key=draft_source_key(stored_id(draft)), channel=draft.channel,
            ts=draft.posted_ts or draft.source_ts, thread_ts=draft.thread_ts, permalink=None,
            captured_by=draft.decided_by, source_kind=ExampleSource.DRAFT, update_existing=False,
        )
    except DuplicateExample as duplicate:
        # The same conversation and reply is stored already (captured from the thread, or another draft): that
        # example stands for this one too, so the same line is never trained on twice.
        return duplicate.existing_id
    return stored_id(result.example)


def _preference(draft: ReplyDraft, preferred: str) -> dict[str, Any]:
    """The OpenAI preference line: the agent's text over the model's draft, for the draft's prompt."""
    return dpo_record(draft.prompt, {"role": "assistant", "content": preferred},
                      {"role": "assistant", "content": draft.draft})


def record_agent_reply(
    db: Database,
    *,
    channel: str,
    thread_ts: str,
    agent: str,
    text: str,
    ts: str,
    window: timedelta,
) -> list[PreferencePair]:
    """Turn an agent's own reply into preference pairs (the reply over the draft) for the drafts they discarded.

    The drafts that count: in this thread, discarded by this agent at most ``window`` ago, shown before the reply
    was posted (``ts``), and without a pair yet. Each draft gets one pair, however often Slack delivers the reply
    and whichever reply comes first; a reply identical to the draft makes none. Returns the pairs this call linked.
    """
    reply = text.strip()
    if not reply:
        return []
    since = utcnow() - window
    query = select(ReplyDraft).where(
        col(ReplyDraft.channel) == channel, col(ReplyDraft.thread_ts) == thread_ts,
        col(ReplyDraft.decided_by) == agent, col(ReplyDraft.outcome) == DraftOutcome.DISCARDED,
        col(ReplyDraft.pair_id).is_(None), col(ReplyDraft.decided_at) >= since,
    ).order_by(col(ReplyDraft.id))
    with db.session() as session:
        discarded = list(session.scalars(query))
    posted_at = _slack_time(ts)
    pairs = []
    for draft in discarded:
        if posted_at is not None and posted_at < draft.created_at.timestamp():
            continue  # written before the draft existed: not an answer in its place
        if reply == draft.draft.strip():
            continue
        pair = _link_pair(db, stored_id(draft), _preference(draft, reply), PairSource.DRAFT_REPLY)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _slack_time(ts: str) -> float | None:
    """A Slack message ts ("1700000000.000100") as epoch seconds; None for anything else (the console's own ids)."""
    try:
        return float(ts)
    except ValueError:
        return None


def _link_pair(db: Database, draft_id: int, record: dict[str, Any], source_kind: str) -> PreferencePair | None:
    """Store ``record`` as a pair and link it to the draft, in one transaction, only if the draft has no pair yet.

    The link is the claim: when two replies (or two deliveries of one) race, the loser's transaction rolls back
    with its pair, so no pair is ever stored without the draft that explains it.
    """
    normalized = normalize_pair(record)
    digest = content_hash(normalized)
    for attempt in range(2):
        try:
            with db.session() as session:
                pair = session.scalar(select(PreferencePair).where(col(PreferencePair.content_hash) == digest))
                if pair is None:
                    pair = PreferencePair(content_hash=digest, record=normalized, source_kind=source_kind)
                    session.add(pair)
                    session.flush()
                link = (update(ReplyDraft)
                        .where(col(ReplyDraft.id) == draft_id, col(ReplyDraft.pair_id).is_(None))
                        .values(pair_id=pair.id))
                if session.exec(link).rowcount != 1:
                    session.rollback()
                    return None
                return pair
        except IntegrityError:
            # A concurrent writer stored the same pair first: the second attempt finds it.
            if attempt:
                raise
    raise AssertionError("unreachable: the pair both exists and does not")


def expire_drafts(db: Database, older_than: timedelta) -> int:
    """Mark drafts nobody decided within ``older_than`` as expired; returns how many."""
    now = utcnow()
    expire = (update(ReplyDraft)
              .where(col(ReplyDraft.outcome).is_(None), col(ReplyDraft.created_at) < now - older_than)
              .values(outcome=DraftOutcome.EXPIRED, decided_at=now))
    with db.session() as session:
        return session.exec(expire).rowcount


def list_drafts(db: Database, *, limit: int | None = None, channel: str | None = None,
                source_ts: str | None = None) -> list[ReplyDraft]:
    """Drafts, newest first; with ``channel`` and ``source_ts``, only those answering that message (auto mode offers
    one question to several agents)."""
    query = select(ReplyDraft).order_by(col(ReplyDraft.created_at).desc(), col(ReplyDraft.id).desc())
    if channel is not None:
        query = query.where(col(ReplyDraft.channel) == channel)
    if source_ts is not None:
        query = query.where(col(ReplyDraft.source_ts) == source_ts)
    if limit is not None:
        query = query.limit(limit)
    with db.session() as session:
        return list(session.scalars(query))


@dataclass(frozen=True)
class DraftFact:
    """What the statistics need of one draft (``trainers.drafts.stats``); the texts only of edited drafts."""

    model: str
    outcome: str | None
    created_at: datetime
    latency_ms: int | None
    cost_usd: float | None
    draft: str | None  # set for EDITED only
    final_text: str | None  # set for EDITED only


def draft_facts(db: Database) -> Iterator[DraftFact]:
    """Every draft's model, outcome, time, latency and cost (and texts, when edited), streamed in id order."""
    query = select(col(ReplyDraft.model), col(ReplyDraft.outcome), col(ReplyDraft.created_at),
                   col(ReplyDraft.latency_ms), col(ReplyDraft.cost_usd), col(ReplyDraft.draft),
                   col(ReplyDraft.final_text)).order_by(col(ReplyDraft.id))
    with db.session() as session:
        for model, outcome, created_at, latency_ms, cost_usd, draft, final_text in session.execute(
                query.execution_options(yield_per=BATCH_SIZE)):
            edited = outcome == DraftOutcome.EDITED
            yield DraftFact(model, outcome, created_at, latency_ms, cost_usd, draft if edited else None,
                            final_text if edited else None)


def set_channel_drafts(db: Database, channel: str, on: bool) -> None:
    """Turn auto mode on or off in a channel: each new customer question there gets a draft for its agents."""
    set_setting(db, AUTO_DRAFTS_PREFIX + channel, bool(on))


def channel_drafts_on(db: Database, channel: str) -> bool:
    """Whether auto mode is on in ``channel`` (off until someone turns it on)."""
    return get_setting(db, AUTO_DRAFTS_PREFIX + channel, False) is True
