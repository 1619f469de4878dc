"""Who may use what: the access policy, written once here and enforced by one middleware before any listener runs.

Every ``/ft`` subcommand (and the subcommands whose permission differs from their command's, such as
``/ft eval add``), every button ``action_id``, shortcut and modal ``callback_id`` and every event the app
registers has one ``Rule``. ``access_middleware`` (registered in ``bot.app``) maps each request to its rule and
refuses it privately, naming the role needed, without running the listener. A request with no rule is refused:
a new listener must get a rule here (``tests/bot/test_access.py`` checks every registered one has).

With no role configured at all, everyone may do everything (``Roles`` answers yes to every check but the
voters'); ``/ft help`` says which rule is in force. The README's access table is ``python -m bot.access``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from slack_bolt import BoltResponse
from slack_bolt.context.respond import Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks as bk
from bot.roles import Roles
from storage.errors import FtbotError

if TYPE_CHECKING:  # bot.app imports this module: a type-only import avoids the cycle
    from bot.app import BotContext

log = logging.getLogger(__name__)

COMMAND = "/ft"


class Permission(StrEnum):
    """Who may use a command, button, shortcut or form. Admins may use everything."""

    ANYONE = "anyone"
    TEAM = "team"  # agents, reviewers, trainers, admins: may read training data
    REVIEWER = "reviewer"
    TRAINER = "trainer"
    ADMIN = "admin"
    VOTER = "voter"


class RequestKind(StrEnum):
    COMMAND = "command"  # a /ft subcommand: "export", or "eval add" where the second word changes the rule
    ACTION = "action"  # a button's action_id
    SHORTCUT = "shortcut"  # a shortcut's callback_id
    VIEW = "view"  # a modal's callback_id (its submission)
    EVENT = "event"  # an Events API event type


# Who each permission admits, as the README and refusals name them.
WHO = {
    Permission.ANYONE: "anyone in the workspace",
    Permission.TEAM: "agents, reviewers, trainers, admins",
    Permission.REVIEWER: "reviewers, admins",
    Permission.TRAINER: "trainers, admins",
    Permission.ADMIN: "admins",
    Permission.VOTER: "voters (everyone when `FTBOT_VOTERS` is unset), admins",
}

# Refusals start with these (existing messages users and tests know: "Only trainers …", "Only reviewers …").
_ONLY = {
    Permission.TEAM: "Only the support team (FTBOT_AGENTS, FTBOT_REVIEWERS, FTBOT_TRAINERS or FTBOT_ADMINS)",
    Permission.REVIEWER: "Only reviewers (FTBOT_REVIEWERS) and admins",
    Permission.TRAINER: "Only trainers (members of the trainers role, FTBOT_TRAINERS) and admins",
    Permission.ADMIN: "Only an ftbot admin (FTBOT_ADMINS)",
    Permission.VOTER: "Only voters (FTBOT_VOTERS) and admins",
}


@dataclass(frozen=True)
class Rule:
    kind: RequestKind
    name: str
    permission: Permission
    what: str  # what the request does, for the README and the refusal: "export the approved examples"
    label: str = ""  # how users see it in the README ("/ft export", "Post button"); the name when empty
    refused: str = ""  # the refusal, when the usual "Only … can …" would not say why

    @property
    def shown(self) -> str:
        if self.label:
            return self.label
        return f"{COMMAND} {self.name}" if self.kind == RequestKind.COMMAND else self.name

    def refusal(self) -> str:
        if self.refused:
            return self.refused
        return f"{_ONLY[self.permission]} can {self.what} (`{self.shown}`). Ask an ftbot admin."


def _command(name: str, permission: Permission, what: str) -> Rule:
    return Rule(RequestKind.COMMAND, name, permission, what)


def _action(name: str, permission: Permission, what: str, label: str) -> Rule:
    return Rule(RequestKind.ACTION, name, permission, what, label)


P = Permission
POLICY: tuple[Rule, ...] = (
    _command("help", P.ANYONE, "list the commands"),
    _command("add", P.TEAM, "capture a reply as a training example"),
    _command("list", P.TEAM, "list recent examples"),
    _command("stats", P.TEAM, "see dataset statistics"),
    _command("review", P.REVIEWER, "review captured examples"),
    _command("prompt", P.ANYONE, "see this channel's system prompt"),
    _command("prompt set", P.REVIEWER, "change a channel's system prompt"),
    _command("prompt reset", P.REVIEWER, "change a channel's system prompt"),
    _command("validate", P.TEAM, "read the dataset report"),
    _command("price", P.TEAM, "read the dataset's price report"),
    _command("export", P.TEAM, "export the approved examples"),
    _command("train", P.TRAINER, "train models"),
    _command("cancel", P.TRAINER, "cancel training"),
    _command("jobs", P.ANYONE, "list training jobs"),
    _command("models", P.ANYONE, "list registered models"),
    _command("use", P.TRAINER, "choose the model in use"),
    _command("eval", P.TRAINER, "start an evaluation round"),
    _command("eval add", P.TEAM, "add evaluation questions"),
    _command("eval close", P.TRAINER, "close an evaluation round"),
    _command("eval resume", P.TRAINER, "resume an evaluation round"),
    _command("eval cancel", P.TRAINER, "cancel an evaluation round"),
    _command("eval score", P.TRAINER, "measure a model's held-out loss"),
    _command("results", P.ANYONE, "see the results of a closed round"),
    # Checked by the handler, which alone knows whether the round is still open (``require``).
    _command("results open", P.TEAM, "see interim results of an open round"),
    _command("judge", P.TRAINER, "run the LLM judge"),
    _command("draft", P.TEAM, "ask for a private draft reply"),
    _command("drafts", P.TEAM, "see whether auto drafts are on in a channel"),
    _command("drafts on", P.TRAINER, "turn auto drafts on or off in a channel"),
    _command("drafts off", P.TRAINER, "turn auto drafts on or off in a channel"),
    _command("deploy", P.ADMIN, "serve a model on a Together AI dedicated endpoint (billed per minute)"),
    _command("undeploy", P.ADMIN, "stop a model's Together AI dedicated endpoint"),
    _action("ft_capture_open", P.TEAM, "capture replies", "Open capture form button"),
    _action("ft_capture_redact", P.TEAM, "capture replies", "Redact PII button (capture form)"),
    _action("ft_review_approve", P.REVIEWER, "approve or reject examples", "Approve button"),
    _action("ft_review_reject", P.REVIEWER, "approve or reject examples", "Reject button"),
    _action("ft_review_page_prev", P.REVIEWER, "review captured examples", "◀ Previous (`/ft review`)"),
    _action("ft_review_page_next", P.REVIEWER, "review captured examples", "Next ▶ (`/ft review`)"),
    _action("ft_train_start", P.TRAINER, "start training", "Start button (training quote)"),
    _action("ft_train_start_allow_pii", P.TRAINER, "start training", "Upload with PII button"),
    _action("ft_train_start_redact_pii", P.TRAINER, "start training", "Redact and start button"),
    Rule(RequestKind.ACTION, "ft_train_start_over_budget", P.ADMIN, "start a job above the budget cap",
         "Start over budget button", "This job is above the budget cap: only an ftbot admin (FTBOT_ADMINS) can start it."),
    _action("ft_train_discard", P.TRAINER, "discard a training quote", "Cancel button (training quote)"),
    _action("ft_eval_post", P.TRAINER, "start an evaluation round", "Post button (evaluation quote)"),
    _action("ft_eval_cancel", P.TRAINER, "cancel an evaluation round", "Cancel button (evaluation quote)"),
    _action("ft_judge_run", P.TRAINER, "run the LLM judge", "Judge button (judge quote)"),
    _action("ft_judge_cancel", P.TRAINER, "cancel an LLM judge quote", "Cancel button (judge quote)"),
    _action("ft_deploy_start", P.ADMIN, "start a Together AI dedicated endpoint", "Deploy button (endpoint quote)"),
    _action("ft_deploy_discard", P.ADMIN, "discard an endpoint quote", "Cancel button (endpoint quote)"),
    # Draft buttons and forms: the listener also checks that the draft was offered to whoever clicks.
    _action("ft_draft_send", P.TEAM, "send their draft reply", "Send button (draft)"),
    _action("ft_draft_edit", P.TEAM, "edit their draft reply", "Edit… button (draft)"),
    _action("ft_draft_discard", P.TEAM, "discard their draft reply", "Discard button (draft)"),
    Rule(RequestKind.SHORTCUT, "ft_add_message", P.TEAM, "capture replies", "Add to ftbot (message shortcut)"),
    Rule(RequestKind.SHORTCUT, "ft_draft_message", P.TEAM, "ask for a private draft reply", "Draft a reply (message shortcut)"),
    Rule(RequestKind.VIEW, "ft_capture", P.TEAM, "capture replies", "Save (capture form)"),
    Rule(RequestKind.VIEW, "ft_draft_edit_form", P.TEAM, "send their edited draft", "Send (draft edit form)"),
    Rule(RequestKind.VIEW, "ft_draft_discard_form", P.TEAM, "discard their draft reply", "Discard (draft discard form)"),
    # Events: the listeners decide (a mention only offers a button the rules above guard; votes check FTBOT_VOTERS).
    Rule(RequestKind.EVENT, "app_mention", P.ANYONE, "get the Open capture form button, or a draft (team only)",
         "`@ftbot add`, `@ftbot draft`"),
    Rule(RequestKind.EVENT, "app_home_opened", P.ANYONE, "see App Home (counts only)", "App Home"),
    Rule(RequestKind.EVENT, "reaction_added", P.ANYONE, "vote (only voters' reactions count)", "reactions (votes)"),
    Rule(RequestKind.EVENT, "reaction_removed", P.ANYONE, "withdraw a vote", "reactions removed"),
    Rule(RequestKind.EVENT, "message", P.ANYONE, "ask questions auto drafts answer; agents' own replies train the model",
         "messages in channels"),
)
# The rules by (kind, name): what the middleware looks up.
RULES: dict[tuple[RequestKind, str], Rule] = {(rule.kind, rule.name): rule for rule in POLICY}

RESULTS_OPEN = RULES[(RequestKind.COMMAND, "results open")]


def allows(roles: Roles, permission: Permission, user: str | None) -> bool:
    """Whether `user` has `permission` (with no role configured, ``Roles`` lets everyone do everything)."""
    checks: dict[Permission, Callable[[str | None], bool]] = {
        Permission.ANYONE: bool,
        Permission.TEAM: roles.may_capture,
        Permission.REVIEWER: roles.may_review,
        Permission.TRAINER: roles.may_train,
        Permission.ADMIN: roles.is_admin,
        Permission.VOTER: roles.may_vote,
    }
    return checks[permission](user)


def command_rule(text: str) -> Rule | None:
    """The rule for ``/ft <text>``: its first two words when they have a rule of their own, else the first.

    Bare ``/ft`` and unknown subcommands answer with the help, so they are ``help``. None: a subcommand the router
    knows but the policy does not (refused).
    """
    words = text.lower().split()
    if not words:
        return RULES[(RequestKind.COMMAND, "help")]
    if len(words) > 1 and (RequestKind.COMMAND, f"{words[0]} {words[1]}") in RULES:
        return RULES[(RequestKind.COMMAND, f"{words[0]} {words[1]}")]
    return RULES.get((RequestKind.COMMAND, words[0]))


def may_use_command(roles: Roles, user: str | None, name: str) -> bool:
    """Whether `user` may use ``/ft name`` in some form (for ``/ft help``: ``eval`` counts when ``eval add`` does)."""
    return any(allows(roles, rule.permission, user) for rule in RULES.values()
               if rule.kind == RequestKind.COMMAND and rule.name.split()[0] == name and rule.name != "results open")


def rule_in_force(roles: Roles) -> str:
    """The one line ``/ft help`` shows about access."""
    if not roles.configured:
        return "No roles are configured: everyone may use every command (set `FTBOT_AGENTS` and the other role variables)."
    return "Roles are configured: this list shows only the commands you may use."


def require(roles: Roles, user: str | None, rule: Rule) -> None:
    """For the one check a handler must make itself (it alone knows the state): raise the rule's refusal."""
    if not allows(roles, rule.permission, user):
        raise FtbotError(rule.refusal())


# ---- the middleware ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Request:
    kind: RequestKind | None
    name: str
    user: str | None
    channel: str | None


def classify(body: dict[str, Any]) -> _Request:
    """The kind, name, user and channel of a request body as Bolt parsed it."""
    kind = body.get("type")
    if body.get("command"):
        return _Request(RequestKind.COMMAND, str(body.get("text") or ""), body.get("user_id"), body.get("channel_id"))
    user = (body.get("user") or {}).get("id")
    channel = (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
    if kind == "block_actions":
        ids = {str(a.get("action_id")) for a in body.get("actions") or []}
        return _Request(RequestKind.ACTION, ids.pop() if len(ids) == 1 else "", user, channel)
    if kind in ("shortcut", "message_action"):
        return _Request(RequestKind.SHORTCUT, str(body.get("callback_id") or ""), user, channel)
    if kind in ("view_submission", "view_closed"):
        return _Request(RequestKind.VIEW, str((body.get("view") or {}).get("callback_id") or ""), user, None)
    if kind == "event_callback":
        event = body.get("event") or {}
        return _Request(RequestKind.EVENT, str(event.get("type") or ""), event.get("user"), event.get("channel"))
    return _Request(None, str(kind or ""), user, channel)


def _refuse(bot: BotContext, client: WebClient, respond: Respond | None, request: _Request, text: str) -> None:
    """Tell the requester privately: through the response_url, else as an ephemeral message where they are."""
    try:
        if respond is not None:
            respond(text=bk.fallback(text), response_type="ephemeral", replace_original=False)
        elif request.user and request.channel:
            client.chat_postEphemeral(channel=request.channel, user=request.user, text=bk.fallback(text))
    except (SlackApiError, OSError) as exc:
        log.warning("could not tell %s that access was refused: %s", request.user, exc)


def access_middleware(bot: BotContext) -> Callable[..., BoltResponse | None]:
    """Global middleware: the request's rule admits its user, or the request ends here with a private refusal."""

    def enforce_access(body: dict[str, Any], client: WebClient, context: Any,
                       next: Callable[[], None]) -> BoltResponse | None:  # noqa: A002 - Bolt's argument name
        request = classify(body)
        if request.kind == RequestKind.COMMAND:
            rule = command_rule(request.name)
            words = request.name.lower().split()
            if words and bot.router.get(words[0]) is None:  # unknown: the router answers with the help
                rule = RULES[(RequestKind.COMMAND, "help")]
        else:
            rule = RULES.get((request.kind, request.name)) if request.kind else None
        if rule is not None and allows(bot.roles, rule.permission, request.user):
            next()
            return None
        if rule is None:
            log.warning("refused %s %r: it has no rule in bot.access.POLICY", request.kind or "request", request.name)
            text = ":no_entry: That request is not in ftbot's access policy, so nobody may use it. Tell your ftbot admin."
        else:
            log.info("refused %s %r to %s: needs %s", request.kind, request.name, request.user, rule.permission)
            text = f":no_entry: {rule.refusal()}"
        respond = getattr(context, "respond", None)
        if request.kind != RequestKind.EVENT:  # events have no one waiting for an answer
            bot.defer(_refuse, bot, client, respond, request, text)
        if request.kind == RequestKind.VIEW and body.get("type") == "view_submission":
            view = bk.modal("ftbot", [bk.section(bk.escape(text))], callback_id="ft_refused")
            return BoltResponse(status=200, body={"response_action": "update", "view": view})
        return BoltResponse(status=200, body="")

    return enforce_access


def policy_markdown() -> str:
    """The README's access table."""
    lines = ["| command, button or event | who may use it | to |", "| --- | --- | --- |"]
    for rule in POLICY:
        shown = rule.shown if rule.kind != RequestKind.COMMAND else f"`{rule.shown}`"
        if rule.name == "results open":
            shown = "`/ft results` of a round still open (interim tally)"
        lines.append(f"| {shown} | {WHO[rule.permission]} | {rule.what} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(policy_markdown())
