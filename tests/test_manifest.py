"""manifest.yml is valid against Slack's published manifest schema and declares what the code listens to."""

from __future__ import annotations

import json

import jsonschema
import pytest
import yaml

from bot.capture import SHORTCUT_ID
from bot.commands import COMMAND
from bot.drafts.ask import SHORTCUT_ID as DRAFT_SHORTCUT_ID
from tests.fixtures.paths import REPO, TEST_DATA

SCHEMA_DIR = TEST_DATA / "slack"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((REPO / "manifest.yml").read_text())


@pytest.mark.parametrize("version", ["1.0.0", "2.0.0"])
def test_manifest_matches_slack_schema(manifest: dict, version: str):
    schema = json.loads((SCHEMA_DIR / f"manifest.schema.{version}.json").read_text())
    jsonschema.validate(manifest, schema)


def test_schema_rejects_a_broken_manifest(manifest: dict):
    """The validation above can fail: a too-long shortcut name is refused."""
    schema = json.loads((SCHEMA_DIR / "manifest.schema.1.0.0.json").read_text())
    broken = json.loads(json.dumps(manifest))
    broken["features"]["shortcuts"][0]["name"] = "A shortcut name far too long"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_manifest_declares_what_the_app_handles(manifest: dict):
    features, settings = manifest["features"], manifest["settings"]
    assert [c["command"] for c in features["slash_commands"]] == [COMMAND]
    assert {(s["type"], s["callback_id"]) for s in features["shortcuts"]} == {("message", SHORTCUT_ID),
                                                                          ("message", DRAFT_SHORTCUT_ID)}
    assert settings["socket_mode_enabled"] is True and settings["interactivity"]["is_enabled"] is True
    assert set(settings["event_subscriptions"]["bot_events"]) >= {"app_mention", "app_home_opened", "reaction_added",
                                                                 "reaction_removed", "message.channels", "message.groups"}
    scopes = set(manifest["oauth_config"]["scopes"]["bot"])
    assert scopes >= {"commands", "chat:write", "channels:history", "groups:history", "reactions:read", "reactions:write",
                      "files:write", "app_mentions:read", "users:read", "usergroups:read"}
    assert features["app_home"]["home_tab_enabled"] and features["app_home"]["messages_tab_enabled"]
