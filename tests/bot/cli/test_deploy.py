"""``ftbot deploy`` and ``ftbot undeploy`` through the real Typer app, the real ``together`` client and the fake
Together server: the quote, ``--yes --json`` creating one endpoint with the idle stop, and the stop."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bot.cli import app
from storage.jobs import register_model
from tests.fixtures.db import database_url
from tests.fixtures.together_serving import PROJECT_ID

FINE_TUNE = "ftbot-user/Meta-Llama-3.1-8B-Instruct-ftbot-sft-job1-abc123"


@pytest.fixture
def cli(monkeypatch, tmp_path, sqlite_db, together_api):
    monkeypatch.setenv("FTBOT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FTBOT_DATABASE_URL", database_url(sqlite_db))
    monkeypatch.setenv("FTBOT_TOGETHER_IDLE_MINUTES", "90")
    together_api.serving.add_model(FINE_TUNE)
    register_model(sqlite_db, name=FINE_TUNE, backend="together", base_model="meta-llama/Meta-Llama-3.1-8B-Instruct",
                   location="/tmp/adapter", metrics={"together_model": "meta-llama/Meta-Llama-3.1-8B-Instruct"})
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(app, list(args), catch_exceptions=False, **kw)


def test_deploy_yes_json_creates_one_endpoint_and_undeploy_deletes_it(cli, together_api):
    result = cli("deploy", FINE_TUNE, "--hardware", "1xnvidia-h100-80gb", "--yes", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "running" and record["hardware"] == "1xnvidia-h100-80gb" and record["idle_minutes"] == 90
    assert record["price_usd_per_hour"] == 3.99 and record["endpoint_name"].startswith("ftbot-team/")
    (deployment,) = [c for c in together_api.requests_to(f"/v2/projects/{PROJECT_ID}/endpoints", "POST")
                     if c.path.endswith("/deployments")]
    assert deployment.json["inactiveTimeout"] == 90

    again = cli("deploy", FINE_TUNE, "--yes", "--json")
    assert again.exit_code == 1 and json.loads(again.stdout)["error"]["message"].startswith(f"{FINE_TUNE} is already on Together")

    stopped = cli("undeploy", FINE_TUNE, "--json")
    assert stopped.exit_code == 0, stopped.output
    assert json.loads(stopped.stdout)["status"] == "stopped" and together_api.serving.endpoints == {}


def test_deploy_declined_at_the_prompt_creates_nothing(cli, together_api):
    result = cli("deploy", FINE_TUNE, input="n\n")
    assert result.exit_code == 0, result.output
    assert "$0.0332 per minute ($1.99 per hour), billed while running, even idle" in result.stdout
    assert "Idle auto-stop: after 90 minutes" in result.stdout and "discarded" in result.stdout
    assert together_api.requests_to(f"/v2/projects/{PROJECT_ID}/endpoints") == []
