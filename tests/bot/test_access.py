"""The access policy (``bot.access``): one table, enforced by one middleware before any listener runs."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from slack_bolt import App

from bot.access import POLICY, Permission, RequestKind, policy_markdown
from bot.evaluation import quotes
from bot.evaluation.commands import EVAL_SUBCOMMANDS
from storage import evals
from storage.evals import RoundStatus
from storage.examples import count_by_status, save_capture
from tests.fixtures.paths import REPO
from tests.fixtures.slack_api import SlackHarness, block_actions, view_submission

CUSTOMER_TEXT = "My card 4111 1111 1111 1111 was charged twice"


def _seed(db, n: int = 3) -> None:
    for i in range(n):
        record = {"messages": [
            {"role": "system", "content": "You are a helpful support agent."},
            {"role": "user", "content": f"{CUSTOMER_TEXT} (case {i})"},
            {"role": "assistant", "content": f"Sorry about that, I refunded the second charge. Reply {i}."},
        ]}
        save_capture(db, record=record, source_key=f"slack:C_SUPPORT:17000000{i:02d}.000100", channel="C_SUPPORT",
                     ts=f"17000000{i:02d}.000100", thread_ts=None, permalink=None, captured_by="U_AGENT",
                     status="approved", approved_by="U_LEAD")


@pytest.fixture
def team(sqlite_db, fake_slack):
    """Roles configured: U_AGENT is an agent, U_LEAD a reviewer, U_TRAINER a trainer; U_CUSTOMER has no role."""
    fake_slack.add_user("U_TRAINER", "tia")
    h = SlackHarness.create(sqlite_db, fake_slack, agents=("U_AGENT",), reviewers=("U_LEAD",), trainers=("U_TRAINER",))
    yield h
    h.close()


def _everything_said_to(h: SlackHarness) -> str:
    return json.dumps([c.args for c in h.fake.calls]) + json.dumps(h.fake.responses)


@pytest.mark.parametrize("text", ["export", "validate", "price", "list", "stats"])
def test_reading_training_data_needs_a_team_role(team: SlackHarness, text: str):
    h = team
    _seed(h.db)
    h.command(text, user_id="U_CUSTOMER")
    h.wait()
    refusal = h.fake.responses[-1]
    assert refusal["response_type"] == "ephemeral"
    assert "Only the support team" in refusal["text"] and "FTBOT_AGENTS" in refusal["text"]
    assert f"/ft {text}" in refusal["text"]
    assert "charged twice" not in _everything_said_to(h)
    assert not h.fake.files and not h.fake.calls_to("conversations.open")


def test_an_agent_may_export(team: SlackHarness):
    h = team
    _seed(h.db)
    h.command("export", user_id="U_AGENT")
    h.wait()
    assert "Exported 3 approved examples" in h.fake.responses[-1]["text"]


def test_without_roles_everyone_may_export_and_help_says_so(slack_bot: SlackHarness):
    h = slack_bot
    _seed(h.db)
    h.command("export", user_id="U_CUSTOMER")
    h.wait()
    assert "Exported 3 approved examples" in h.fake.responses[-1]["text"]
    h.command("help", user_id="U_CUSTOMER")
    h.wait()
    assert "No roles are configured: everyone may use every command" in json.dumps(h.fake.responses[-1]["blocks"])


def test_help_with_roles_lists_only_what_the_requester_may_use(team: SlackHarness):
    h = team
    h.command("help", user_id="U_CUSTOMER")
    h.wait()
    listed = json.dumps(h.fake.responses[-1]["blocks"])
    assert "Roles are configured" in listed
    assert "/ft help" in listed and "/ft models" in listed
    for hidden in ("/ft export", "/ft validate", "/ft list", "/ft review", "/ft train", "/ft add"):
        assert hidden not in listed
    h.command("help", user_id="U_TRAINER")
    h.wait()
    listed = json.dumps(h.fake.responses[-1]["blocks"])
    assert "/ft train" in listed and "/ft export" in listed and "/ft review" not in listed


def test_interim_results_of_an_open_round_need_a_team_role(team: SlackHarness):
    h = team
    round_id = evals.create_round(h.db, candidate_model="ft:cand", baseline_model="gpt-base",
                                  prompts=[[{"role": "user", "content": CUSTOMER_TEXT}]], channel="C_SUPPORT",
                                  created_by="U_TRAINER", status=RoundStatus.OPEN).example.id
    h.command(f"results {round_id}", user_id="U_CUSTOMER")
    h.wait()
    refusal = h.fake.responses[-1]["text"]
    assert "Only the support team" in refusal and "interim results" in refusal
    h.command(f"results {round_id}", user_id="U_AGENT")
    h.wait()
    assert "Interim result" in json.dumps(h.fake.responses[-1]["blocks"])


def test_the_cancel_button_of_an_eval_quote_needs_a_trainer(team: SlackHarness):
    h = team
    round_id = evals.create_round(h.db, candidate_model="ft:cand", baseline_model="gpt-base",
                                  prompts=[[{"role": "user", "content": "hi"}]], channel="C_SUPPORT",
                                  created_by="U_TRAINER", status=RoundStatus.QUOTED).example.id
    h.interact(block_actions(quotes.CANCEL_ACTION, str(round_id), user_id="U_CUSTOMER", response_url=h.fake.response_url()))
    h.wait()
    assert "Only trainers" in h.fake.responses[-1]["text"]
    assert evals.get_round(h.db, round_id).status == RoundStatus.QUOTED
    h.interact(block_actions(quotes.CANCEL_ACTION, str(round_id), user_id="U_TRAINER", response_url=h.fake.response_url()))
    h.wait()
    assert evals.get_round(h.db, round_id).status == RoundStatus.CANCELLED


def test_a_refused_button_never_runs_its_listener(team: SlackHarness):
    h = team
    _seed(h.db)
    h.interact(block_actions("ft_review_reject", "1", user_id="U_CUSTOMER", response_url=h.fake.response_url()))
    h.wait()
    assert "Only reviewers" in h.fake.responses[-1]["text"] and count_by_status(h.db)["approved"] == 3


def test_a_listener_without_a_policy_entry_is_refused(team: SlackHarness):
    """Fail closed: an action nobody wrote a rule for never reaches its listener, not even for an admin."""
    h = team
    ran = []
    h.app.action("ft_unlisted_button")(lambda ack: (ack(), ran.append(True)))
    h.interact(block_actions("ft_unlisted_button", user_id="U_TRAINER", response_url=h.fake.response_url()))
    h.wait()
    assert not ran
    assert "not in ftbot's access policy" in h.fake.responses[-1]["text"]


def test_a_subcommand_without_a_policy_entry_is_refused(team: SlackHarness):
    h = team
    ran = []
    h.bot.router.add("unlisted", usage="/ft unlisted", summary="x", handler=lambda ctx: ran.append(True))
    h.command("unlisted", user_id="U_TRAINER")
    h.wait()
    assert not ran and "not in ftbot's access policy" in h.fake.responses[-1]["text"]


def _registered_listeners(monkeypatch, sqlite_db, fake_slack) -> tuple[dict[RequestKind, list[Any]], SlackHarness]:
    """What ``build_app`` registers, recorded from Bolt's own registration methods."""
    seen: dict[RequestKind, list[Any]] = {kind: [] for kind in RequestKind}
    for method, kind in (("action", RequestKind.ACTION), ("shortcut", RequestKind.SHORTCUT), ("view", RequestKind.VIEW),
                         ("event", RequestKind.EVENT), ("command", RequestKind.COMMAND)):
        original = getattr(App, method)

        def recording(self, constraint, *args, _original=original, _kind=kind, **kwargs):
            seen[_kind].append(constraint)
            return _original(self, constraint, *args, **kwargs)

        monkeypatch.setattr(App, method, recording)
    return seen, SlackHarness.create(sqlite_db, fake_slack)


def test_every_registered_listener_and_subcommand_has_a_policy_entry(monkeypatch, sqlite_db, fake_slack):
    seen, h = _registered_listeners(monkeypatch, sqlite_db, fake_slack)
    try:
        names = {kind: {rule.name for rule in POLICY if rule.kind == kind} for kind in RequestKind}
        assert seen[RequestKind.COMMAND] == ["/ft"]
        for kind in (RequestKind.ACTION, RequestKind.SHORTCUT, RequestKind.VIEW, RequestKind.EVENT):
            assert seen[kind], f"no {kind} listener recorded: did Bolt's registration API change?"
            for constraint in seen[kind]:
                if isinstance(constraint, re.Pattern):
                    assert any(constraint.match(name) for name in names[kind]), f"{kind} {constraint.pattern} has no policy"
                else:
                    assert constraint in names[kind], f"{kind} {constraint!r} has no policy entry"
        commands = names[RequestKind.COMMAND]
        for name in h.bot.router.names():
            assert name in commands, f"/ft {name} has no policy entry"
        for sub in EVAL_SUBCOMMANDS:
            assert f"eval {sub}" in commands
        # ...and no stale entries: each rule names something the app registers.
        for rule in POLICY:
            if rule.kind == RequestKind.COMMAND:
                assert rule.name.split()[0] in h.bot.router.names(), rule.name
            else:
                assert any(c == rule.name or (isinstance(c, re.Pattern) and c.match(rule.name)) for c in seen[rule.kind]), rule
    finally:
        h.close()


def test_the_readme_shows_the_access_policy_from_the_code():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert policy_markdown() in readme, "regenerate it with `python -m bot.access` and paste it under Roles"


def test_every_permission_is_described():
    assert {rule.permission for rule in POLICY} <= set(Permission)


def test_a_refused_form_submission_is_answered_in_the_form(team: SlackHarness):
    h = team
    view = {"id": "V1", "type": "modal", "callback_id": "ft_capture", "private_metadata": "{}", "blocks": []}
    response = h.interact(view_submission(view, {}, user_id="U_CUSTOMER"))
    answer = json.loads(response.body)
    assert response.status == 200 and answer["response_action"] == "update"
    assert "Only the support team" in json.dumps(answer["view"])
