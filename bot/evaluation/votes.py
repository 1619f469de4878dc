"""Reactions on comparison messages as votes: cast, moved, or withdrawn.

One vote per voter per comparison: a new reaction moves it; removing the reaction that cast it falls back to another
vote reaction the voter still has on the message, else withdraws it. Skin tones are normalised, the bot's own
reactions ignored, the optional voter allowlist (``FTBOT_VOTERS``) enforced, and retried events count once (each
vote keeps the time of the event that set it). Slack does not order deliveries, so each removal is remembered with
its time: a ``reaction_added`` older than it, delivered after it, casts nothing. What each reaction means is
``storage.votes``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.evaluation.rounds import call_slack, close_and_report
from storage import evals
from storage.evals import RoundStatus
from storage.models import stored_id, utcnow
from storage.votes import VoteChoice, choice_for_reaction, normalize_reaction

if TYPE_CHECKING:  # bot.app imports every feature (so this module): a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)


def _event_time(event: dict[str, Any]) -> datetime:
    try:
        return datetime.fromtimestamp(float(event.get("event_ts") or 0), tz=UTC) if event.get("event_ts") else utcnow()
    except (TypeError, ValueError):
        return utcnow()


def handle_reaction(bot: BotContext, client: WebClient, event: dict[str, Any], *, added: bool,
                    bot_user_id: str | None) -> str:
    """Count, move or withdraw a vote; returns what happened (for logs and tests)."""
    item = event.get("item") or {}
    if item.get("type") != "message":
        return "ignored: not a message"
    choice = choice_for_reaction(event.get("reaction"))
    if choice is None:
        return "ignored: not a vote reaction"
    voter = event.get("user") or ""
    if not voter or voter == bot_user_id:
        return "ignored: the bot's own reaction"
    comparison = evals.comparison_for_message(bot.db, item.get("channel") or "", item.get("ts") or "")
    if comparison is None:
        return "ignored: not a comparison message"
    comparison_id = stored_id(comparison)
    round_ = evals.get_round(bot.db, comparison.round_id)
    reaction = normalize_reaction(event.get("reaction"))
    if evals.is_voting_over(round_):
        if round_.status in RoundStatus.VOTABLE:
            bot.defer(close_and_report, bot, stored_id(round_))  # posts the results: not on the event's listener thread
        if added:
            _tell(client, item.get("channel"), voter, f"Voting on round #{round_.id} has closed; that reaction was not counted.")
        return "ignored: voting closed"
    if not bot.roles.may_vote(voter):
        if added:
            _tell(client, item.get("channel"), voter, "Only the team's voters can vote on blind comparisons (FTBOT_VOTERS); "
                  "your reaction was not counted.")
        return "ignored: not a voter"
    at = _event_time(event)
    if added:
        change = evals.cast_vote(bot.db, comparison_id, voter, choice, reaction=reaction, at=at)
        return f"vote {change.action}"
    # First, so an add of this reaction older than this removal that Slack delivers later casts nothing.
    evals.remember_removal(bot.db, comparison_id, voter, reaction=reaction, at=at)
    vote = evals.get_vote(bot.db, comparison_id, voter)
    if vote is None or vote.reaction != reaction:
        return "no vote to withdraw"  # that reaction no longer casts the vote: nothing to ask Slack
    fallback = _remaining_vote_reaction(client, item.get("channel") or "", item.get("ts") or "", voter, removed=reaction)
    if not evals.retract_vote(bot.db, comparison_id, voter, reaction=reaction, at=at, fallback=fallback):
        return "no vote to withdraw"
    return f"vote moved to {fallback[0]}" if fallback else "vote withdrawn"


def _remaining_vote_reaction(client: WebClient, channel: str, ts: str, voter: str, *,
                             removed: str) -> tuple[VoteChoice, str] | None:
    """(choice, reaction) of a vote reaction `voter` still has on the message, else None.

    Slack's ``reaction_removed`` says only what was removed, so ask for the message's reactions (``full`` lists
    every user). Slack does not say in which order a person added several, so with more than one left the
    first in the message's order counts (the bot seeded :a: :b: :handshake: :-1: in that order). The removed
    name is skipped in case Slack's answer lags behind the event; if it was added back, that event re-casts it.
    """
    try:
        response = call_slack(client.reactions_get, channel=channel, timestamp=ts, full=True)
    except SlackApiError as error:
        log.warning("cannot read the reactions on %s/%s (%s); withdrawing the vote", channel, ts, error.response.get("error"))
        return None
    for entry in (response.get("message") or {}).get("reactions") or []:
        name = normalize_reaction(entry.get("name"))
        choice = choice_for_reaction(name)
        if choice is not None and name != removed and voter in (entry.get("users") or []):
            return choice, name
    return None


def _tell(client: WebClient, channel: str | None, user: str, text: str) -> None:
    if not channel:
        return
    try:
        client.chat_postEphemeral(channel=channel, user=user, text=text)
    except SlackApiError as error:
        log.info("cannot tell %s: %s", user, error.response.get("error"))
