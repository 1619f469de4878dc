"""Credentials and server paths are removed from external error text before it is stored or posted."""

from __future__ import annotations

import pytest

from storage.scrub import hide_paths, scrub_credentials


@pytest.mark.parametrize("secret", [
    "sk-abc123DEF456", "sk-proj-AbC_12-xyz", "xoxb-1234-5678-abcdef", "xoxp-1-2-3", "xapp-1-A02-123-abc",
])
def test_tokens_are_replaced(secret):
    scrubbed = scrub_credentials(f"Incorrect API key provided: {secret}. See the docs.")
    assert secret not in scrubbed
    assert scrubbed == "Incorrect API key provided: [redacted]. See the docs."


def test_bearer_tokens_are_replaced_whatever_the_case():
    assert scrub_credentials("header was 'Authorization: Bearer xyz.abc-123'") == "header was 'Authorization: Bearer [redacted]'"
    assert "tok" not in scrub_credentials("bearer tok3n")


def test_ordinary_text_is_left_alone():
    text = "task-runner failed: risk-free ask-me 'sk' and xoxo, the model gpt-4o-mini"
    assert scrub_credentials(text) == text


def test_paths_under_the_home_are_hidden(tmp_path):
    home = tmp_path / "home"
    assert hide_paths(f"cannot read {home}/jobs/7/worker.log", home) == "cannot read <ftbot home>/jobs/7/worker.log"
