"""``/ft eval add``: a held-out question from a thread link or typed text."""

from __future__ import annotations

from storage import eval_prompts
from tests.bot.evaluation.helpers import CHANNEL


def test_eval_add_from_thread_link_and_text(harness):
    h = harness
    fake = h.fake
    # Slack escapes &, < and > in message text; the stored question has them back as typed.
    parent = fake.post_message(CHANNEL, "U_CUSTOMER", "My invoice is wrong &lt;b&gt;")
    fake.post_message(CHANNEL, "U_AGENT", "Which invoice number?", thread_ts=parent["ts"])
    question = fake.post_message(CHANNEL, "U_CUSTOMER", "Number 42, from March", thread_ts=parent["ts"])
    fake.post_message(CHANNEL, "U_AGENT", "Refunded.", thread_ts=parent["ts"])
    link = fake.permalink(CHANNEL, question["ts"], parent["ts"])
    h.command(f"eval add {link}", user_id="U_AGENT")
    h.wait()
    prompts = eval_prompts.list_eval_prompts(h.db)
    assert len(prompts) == 1
    messages = prompts[0].messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "Number 42, from March" and messages[1]["content"] == "My invoice is wrong <b>"
    assert "Added evaluation question" in fake.responses[-1]["text"]

    h.command(f"eval add {link}", user_id="U_AGENT")
    h.wait()
    assert "already in the evaluation set" in fake.responses[-1]["text"]

    h.command("eval add How do I export to CSV?", user_id="U_AGENT")
    h.wait()
    assert eval_prompts.list_eval_prompts(h.db)[-1].messages[-1] == {"role": "user", "content": "How do I export to CSV?"}

    h.command("eval add", user_id="U_AGENT")
    h.wait()
    assert "usage" in fake.responses[-1]["text"].lower()
