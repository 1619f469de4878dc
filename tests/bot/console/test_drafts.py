"""Drafts in the local console: `@ftbot draft` in a thread, the buttons, auto mode, as a user of `ftbot run` sees them."""

from __future__ import annotations

import io

import pytest

from bot.console.shell import Console
from storage.config import Settings
from storage.drafts import list_drafts
from storage.jobs import register_model, use_model
from storage.vocabulary import DraftOutcome

ANSWER = "Yes: Settings → Billing → Invoices, then Download."


def _console(db, **settings) -> Console:
    return Console(Settings(**settings), db, out=io.StringIO())


def _run(console: Console, *lines: str) -> str:
    start = len(console.out.getvalue())
    for line in lines:
        console.handle(line)
    console.bot.wait_idle(60)
    return console.out.getvalue()[start:]


def test_draft_send_in_a_thread(sqlite_db, openai_api):
    openai_api.responder = lambda request: ANSWER
    register_model(sqlite_db, name="acme-sft-job1", backend="openai", base_model="gpt-4o-mini-2024-07-18", location="ft:x")
    use_model(sqlite_db, "acme-sft-job1")
    console = _console(sqlite_db)
    try:
        out = _run(console, "Where can I download my invoices?", ":thread 1", ":as agent", "@ftbot draft")
        assert "(only you) ftbot:" in out and ANSWER in out and "Drafted by *acme-sft-job1*" in out
        assert "[1: Send] [2: Edit…] [3: Discard]" in out
        out = _run(console, ":click 1")
        assert f"#3 ↳ ftbot:\n    {ANSWER}" in out and "sent by @agent · drafted by ftbot (acme-sft-job1)" in out
        assert "(only you, replacing the last reply) ftbot:" in out and "Sent in the thread" in out
        assert list_drafts(sqlite_db)[0].outcome == DraftOutcome.SENT

        # Auto mode: the lead turns it on, the customer's next question is offered to the team (agent and lead).
        out = _run(console, ":as lead", ":main", "/ft drafts on", ":as customer", "Do you ship to Norway?")
        assert "Auto drafts are *on*" in out
        assert "(only agent sees this) ftbot:" in out and "(only lead sees this) ftbot:" in out
        assert "(only customer sees this)" not in out
        out = _run(console, ":draft 4")  # the customer cannot use the shortcut
        assert "Only the support team" in out
    finally:
        console.close()


@pytest.mark.slow
def test_a_local_model_drafts_in_the_console(sqlite_db, tmp_path, tiny_model_dir, adapter_dir):
    """As after `/ft train local` in the console: the newest local model drafts (none is in use yet), in ftbot's
    own drafting process."""
    register_model(sqlite_db, name="tiny-sft-job1", backend="local", base_model=str(tiny_model_dir), location=str(adapter_dir))
    console = _console(sqlite_db, home=tmp_path / "home", draft_max_tokens=8)
    try:
        out = _run(console, "Where can I download my invoices?", ":thread 1", ":as agent", "@ftbot draft")
        console.bot.wait_idle(120)
        out += console.out.getvalue()
        assert "Drafting a reply with *tiny-sft-job1*" in out and "[1: Send] [2: Edit…] [3: Discard]" in out
        assert "No model is in use, so this draft comes from the newest one" in out
        [draft] = list_drafts(sqlite_db)
        assert draft.model == "tiny-sft-job1" and draft.draft.strip()
    finally:
        console.close()
