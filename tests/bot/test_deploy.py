"""/ft deploy and /ft undeploy through the real Bolt app (signed requests, fake Slack) and the fake Together server
(the real ``together`` client): admins only, a quote with the price per minute and the idle stop that creates
nothing, one endpoint per Deploy click (double click too), undeploy deletes it."""

from __future__ import annotations

import json

from bot.deploy import DEPLOY_ACTION, DISCARD_ACTION
from bot.scheduler import REFRESH_ENDPOINTS_JOB, context_key, refresh_together_endpoints, start_scheduler
from storage.deployments import list_deployments
from storage.jobs import register_model
from storage.vocabulary import DeploymentStatus
from tests.bot import training_helpers as slack
from tests.fixtures.slack_api import block_actions
from tests.fixtures.together_serving import PROJECT_ID

FINE_TUNE = "ftbot-user/Meta-Llama-3.1-8B-Instruct-ftbot-sft-job1-abc123"


def _model(db, name: str = FINE_TUNE, base: str = "meta-llama/Meta-Llama-3.1-8B-Instruct") -> None:
    register_model(db, name=name, backend="together", base_model=base.removesuffix("-Reference"),
                   location="/tmp/adapter", metrics={"together_model": base})


def _endpoint_creations(together_api) -> list:
    return together_api.requests_to(f"/v2/projects/{PROJECT_ID}/endpoints", "POST")


def test_deploy_quotes_then_one_click_creates_one_endpoint_and_undeploy_deletes_it(harnesses, together_api):
    together_api.serving.add_model(FINE_TUNE)
    bot = harnesses(admins=("U_ADMIN",), trainers=("U_TRAINER",))
    _model(bot.db)

    quote = slack.quote(bot, f"deploy {FINE_TUNE}", user="U_ADMIN")
    assert quote["response_type"] == "ephemeral"
    shown = quote["text"] + json.dumps(quote["blocks"])
    assert "$0.0332 per minute ($1.99 per hour), billed while running, even idle" in shown
    assert "Idle auto-stop: after 60 minutes without a request" in shown and "1xnvidia-l40s-48gb" in shown
    assert _endpoint_creations(together_api) == []  # nothing before the click
    row_id = slack.buttons(quote)[DEPLOY_ACTION]

    for _ in range(2):  # a double click creates one endpoint
        bot.interact(block_actions(DEPLOY_ACTION, row_id, user_id="U_ADMIN", response_url=bot.fake.response_url()))
    bot.wait()
    created = _endpoint_creations(together_api)
    deployments = [c for c in created if c.path.endswith("/deployments")]
    assert len(created) == 2 and len(deployments) == 1 and deployments[0].json["inactiveTimeout"] == 60
    (row,) = list_deployments(bot.db)
    assert row.status == DeploymentStatus.RUNNING and row.started_by == "U_ADMIN"
    assert any(f"deployed on Together (endpoint `{row.endpoint_name}`" in r.get("text", "") for r in bot.fake.responses)
    # While it bills, /ft models says so next to the model.
    listed = slack.quote(bot, "models", user="U_TRAINER")["text"]
    assert f"served on Together (`{row.endpoint_name}`, $1.99/h until `/ft undeploy`)" in listed

    answer = slack.quote(bot, f"undeploy {FINE_TUNE}", user="U_ADMIN")
    assert "deleted on Together" in answer["text"]
    assert together_api.serving.endpoints == {}
    assert list_deployments(bot.db)[0].status == DeploymentStatus.STOPPED
    assert "served on Together" not in slack.quote(bot, "models", user="U_TRAINER")["text"]


def test_deploy_is_refused_to_a_trainer_and_its_button_too(harnesses, together_api):
    together_api.serving.add_model(FINE_TUNE)
    bot = harnesses(admins=("U_ADMIN",), trainers=("U_TRAINER",))
    _model(bot.db)
    refused = slack.quote(bot, f"deploy {FINE_TUNE}", user="U_TRAINER")
    assert "Only an ftbot admin (FTBOT_ADMINS)" in refused["text"]
    row_id = slack.buttons(slack.quote(bot, f"deploy {FINE_TUNE}", user="U_ADMIN"))[DEPLOY_ACTION]
    slack.click(bot, DEPLOY_ACTION, row_id, user="U_TRAINER")
    assert "Only an ftbot admin" in bot.fake.responses[-1]["text"]
    assert _endpoint_creations(together_api) == []
    slack.click(bot, DISCARD_ACTION, row_id, user="U_ADMIN")
    assert "Nothing was created on Together" in bot.fake.responses[-1]["text"]


def test_a_reference_base_is_refused_with_the_reason_and_nothing_is_asked_of_together(harnesses, together_api):
    bot = harnesses(admins=("U_ADMIN",))
    _model(bot.db, "ref-<b>model</b>", base="meta-llama/Meta-Llama-3.1-8B-Instruct-Reference")
    answer = slack.quote(bot, "deploy ref-<b>model</b>", user="U_ADMIN")
    assert "cannot serve them on a dedicated endpoint" in answer["text"]
    assert "<b>" not in answer["text"] and "&lt;b&gt;" in answer["text"]
    assert together_api.calls == [] and list_deployments(bot.db) == []


def test_an_endpoint_that_stopped_when_idle_is_no_longer_listed_as_served(harnesses, together_api):
    together_api.serving.add_model(FINE_TUNE)
    bot = harnesses(admins=("U_ADMIN",))
    _model(bot.db)
    row_id = slack.buttons(slack.quote(bot, f"deploy {FINE_TUNE}", user="U_ADMIN"))[DEPLOY_ACTION]
    slack.click(bot, DEPLOY_ACTION, row_id, user="U_ADMIN")
    (row,) = list_deployments(bot.db)
    assert "served on Together" in slack.quote(bot, "models", user="U_ADMIN")["text"]
    # The bot checks its endpoints on a schedule; Together stopped this one after its idle minutes.
    assert [j for j in start_scheduler(bot.bot).get_jobs() if j.id == REFRESH_ENDPOINTS_JOB]
    together_api.serving.deployments[row.deployment_id]["status"] = {"state": "DEPLOYMENT_STATE_STOPPED",
                                                                     "message": "idle for 60 minutes"}
    assert refresh_together_endpoints(context_key(bot.bot)) == 1
    assert list_deployments(bot.db)[0].status == DeploymentStatus.STOPPED
    assert "served on Together" not in slack.quote(bot, "models", user="U_ADMIN")["text"]
