"""``/ft eval`` and ``/ft results``: clear errors, resuming after a restart, and no ML stack in the bot process."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from storage import evals
from storage.evals import RoundStatus
from tests.bot.evaluation.helpers import BASE, CANDIDATE, CHANNEL, comparison_posts, post_round, seed_model, start_round
from tests.fixtures.paths import REPO
from trainers.evaluation.results import round_report


def test_eval_errors_are_clear(harness):
    h = harness
    h.command("eval", user_id="U_AGENT")
    h.wait()
    assert "no trained model" in h.fake.responses[-1]["text"]
    h.command("eval --n 0", user_id="U_AGENT")
    h.wait()
    assert "--n" in h.fake.responses[-1]["text"]
    h.command("results", user_id="U_AGENT")
    h.wait()
    assert "no evaluation round yet" in h.fake.responses[-1]["text"]


def test_evaluation_commands_do_not_import_the_ml_stack(tmp_path):
    code = (
        "import sys, io, tempfile\n"
        "from storage.config import Settings\nfrom storage.db import Database\nfrom bot.console.shell import Console\n"
        "import trainers.evaluation.results, trainers.evaluation.charts, trainers.evaluation.generation, trainers.evaluation.inference, "
        "trainers.evaluation.judge, bot.cli.evaluation\n"
        "db = Database.open('sqlite:///' + tempfile.mkdtemp() + '/x.db')\n"
        "c = Console(Settings(), db, out=io.StringIO())\n"
        "c.handle('/ft eval add How do I export?'); c.handle('/ft eval'); c.handle('/ft results'); c.close()\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'bitsandbytes') if m in sys.modules))\n"
    )
    env = {**os.environ, "FTBOT_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                            cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_resume_after_a_restart_posts_only_what_is_missing(harness, openai_api):
    h = harness
    seed_model(h.db)
    baseline = f"openai:{BASE}"
    prompts = [[{"role": "user", "content": f"Interrupted question {i}?"}] for i in range(4)]
    # A round whose process died mid-generation: two candidate answers already stored.
    round_ = evals.create_round(h.db, candidate_model=CANDIDATE, baseline_model=baseline, prompts=prompts,
                                channel=CHANNEL, status=RoundStatus.GENERATING).example
    comparisons = evals.round_comparisons(h.db, round_.id)
    evals.set_answers(h.db, round_.id, CANDIDATE, {c.id: "stored before the restart" for c in comparisons[:2]})

    h.command("eval", user_id="U_AGENT")
    h.wait()
    assert f"/ft eval resume {round_.id}" in h.fake.responses[-1]["text"]

    h.command(f"eval resume {round_.id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert len([c for c in openai_api.calls if "chat/completions" in c.path]) == 6  # 2 candidate + 4 baseline
    assert evals.get_round(h.db, round_.id).status == RoundStatus.OPEN
    assert len(comparison_posts(h)) == 4

    # A round interrupted while posting: two comparisons were posted, two were not.
    second = evals.create_round(h.db, candidate_model=CANDIDATE, baseline_model=baseline, prompts=prompts,
                                channel=CHANNEL, status=RoundStatus.POSTING).example
    rows = evals.round_comparisons(h.db, second.id)
    evals.set_answers(h.db, second.id, CANDIDATE, {c.id: "a" for c in rows})
    evals.set_answers(h.db, second.id, baseline, {c.id: "b" for c in rows})
    for c in rows[:2]:
        posted = h.fake.post_message(CHANNEL, None, "Blind comparison (before restart)", bot=True)
        evals.set_comparison_message(h.db, c.id, channel=CHANNEL, message_ts=posted["ts"])
    h.fake.reset_calls()
    h.command(f"eval resume {second.id}", user_id="U_AGENT")
    h.wait(timeout=30)
    assert len(comparison_posts(h)) == 2
    assert evals.get_round(h.db, second.id).status == RoundStatus.OPEN
    assert len({c.message_ts for c in evals.round_comparisons(h.db, second.id)}) == 4

    h.command(f"eval resume {second.id}", user_id="U_AGENT")
    h.wait()
    assert "nothing to resume" in h.fake.responses[-1]["text"]


# An open round's models: no output may name them while the round is open.
SECRET_CANDIDATE = "ft:gpt-4o-mini-2024-07-18:acme:zebra:s3cr3t"
SECRET_BASELINE = "openai:okapi-base"


def _voted_round(db, candidate: str, baseline: str, outcomes: str, *, close: bool = False) -> int:
    """An open round (closed if asked) with one vote per comparison; outcomes: "w" win, "l" loss, "t" tie for the candidate."""
    round_ = evals.create_round(db, candidate_model=candidate, baseline_model=baseline, channel=CHANNEL,
                                prompts=[[{"role": "user", "content": f"{candidate} question {i}?"}] for i in range(len(outcomes))],
                                rng=random.Random(len(outcomes))).example
    comparisons = evals.round_comparisons(db, round_.id)
    evals.set_answers(db, round_.id, candidate, {c.id: f"candidate answer {c.id}" for c in comparisons})
    evals.set_answers(db, round_.id, baseline, {c.id: f"baseline answer {c.id}" for c in comparisons})
    evals.move_round(db, round_.id, RoundStatus.OPEN)
    for c, outcome in zip(comparisons, outcomes, strict=True):
        other = "B" if c.candidate_side == "A" else "A"
        choice = {"w": c.candidate_side, "l": other, "t": "tie"}[outcome]
        evals.cast_vote(db, c.id, f"U_VOTER{c.id}", choice, reaction=choice.lower())
    if close:
        evals.close_round(db, round_.id)
    return round_.id


def _results_posts(h) -> list[str]:
    return [json.dumps(c.args) for c in h.fake.calls_to("chat.postMessage") if "Round #" in (c.args.get("text") or "")]


def _assert_blind(output: str) -> None:
    assert "zebra" not in output and "okapi" not in output


def test_an_open_round_stays_blind_while_other_rounds_close(trainer_harness):
    h = trainer_harness
    _voted_round(h.db, "cand-old", f"openai:{BASE}", "wlw", close=True)
    secret = _voted_round(h.db, SECRET_CANDIDATE, SECRET_BASELINE, "wwwww")  # round 1: open, votes cast
    closing = _voted_round(h.db, "cand-new", f"openai:{BASE}", "wwlt")  # round 2: closed while round 1 is open

    h.command(f"eval close {closing}", user_id="U_AGENT")
    h.wait()
    [closing_post] = _results_posts(h)
    _assert_blind(closing_post)
    # Three models of the two closed rounds: a leaderboard of their 3 + 4 votes, none of the open round's 5.
    assert "Leaderboard across all rounds" in closing_post and "7 votes" in closing_post
    assert "cand-old" in closing_post and "cand-new" in closing_post

    h.command(f"results {closing}", user_id="U_AGENT")
    h.command("results", user_id="U_AGENT")  # the latest round of the channel
    h.wait()
    posts = _results_posts(h)
    assert len(posts) == 3
    for post in posts:
        _assert_blind(post)
        assert "7 votes" in post

    h.command(f"results {secret}", user_id="U_AGENT")
    h.wait()
    interim = json.dumps(h.fake.responses[-1])
    _assert_blind(interim)
    assert "5 votes on 5 questions" in interim and "5 wins" in interim
    assert "Leaderboard" not in interim  # counts only while the round is open: no model names at all

    h.event({"type": "app_home_opened", "user": "U_AGENT", "channel": "D1", "tab": "home", "event_ts": "1.0"},
            event_id="EvBlindHome")
    h.wait()
    _assert_blind(json.dumps(h.fake.home_views["U_AGENT"]))


def test_judge_without_an_openai_key_says_which_variable_to_set_before_quoting(trainer_harness, monkeypatch):
    h = trainer_harness
    seed_model(h.db)
    round_id = start_round(h)
    post_round(h, round_id)
    monkeypatch.delenv("OPENAI_API_KEY")
    h.command(f"judge {round_id}", user_id="U_AGENT")
    h.wait()
    answer = h.fake.responses[-1]
    assert "OPENAI_API_KEY" in answer["text"] and "Judge or cancel" not in answer["text"]
    assert answer["response_type"] == "ephemeral" and "actions" not in json.dumps(answer.get("blocks", []))


def test_results_with_a_word_instead_of_a_round_is_a_usage_error(harness):
    h = harness
    for text in ("results abc", "results 1 2"):
        h.command(text, user_id="U_AGENT")
        h.wait()
        assert "Usage: `/ft results [round]`" in h.fake.responses[-1]["text"]


def test_a_round_closed_without_votes_does_not_invite_votes(trainer_harness):
    h = trainer_harness
    round_id = _voted_round(h.db, "cand-quiet", f"openai:{BASE}", "ww")
    for c in evals.round_comparisons(h.db, round_id):  # nobody voted after all
        evals.retract_vote(h.db, c.id, f"U_VOTER{c.id}", reaction=c.candidate_side.lower())
    h.command(f"eval close {round_id}", user_id="U_AGENT")
    h.wait()
    [post] = _results_posts(h)
    assert "no decisive votes" in post
    for invitation in ("react", "React", "🅰️", ":a:", "vote with", "yet"):
        assert invitation not in post, invitation


def test_a_second_round_needs_parallel_and_an_open_round_can_be_cancelled_unrevealed(trainer_harness):
    h = trainer_harness
    seed_model(h.db)
    open_id = _voted_round(h.db, SECRET_CANDIDATE, SECRET_BASELINE, "ww")
    h.command("eval --n 4", user_id="U_AGENT")
    h.wait()
    refusal = h.fake.responses[-1]["text"]
    assert f"round #{open_id} is open for voting in this channel" in refusal
    assert f"/ft eval close {open_id}" in refusal and f"/ft eval cancel {open_id}" in refusal and "--parallel" in refusal
    parallel = start_round(h, "eval --n 4 --parallel")
    assert evals.get_round(h.db, parallel).status == RoundStatus.QUOTED

    h.command(f"eval cancel {open_id}", user_id="U_AGENT")
    h.wait()
    answer = h.fake.responses[-1]["text"]
    assert f"Round #{open_id} cancelled" in answer and "votes" in answer and "never" in answer
    assert evals.get_round(h.db, open_id).status == RoundStatus.CANCELLED
    _assert_blind(answer)
    h.command(f"results {open_id}", user_id="U_AGENT")
    h.wait()
    shown = json.dumps(h.fake.responses[-1])
    _assert_blind(shown)
    assert "cancelled" in shown and not _results_posts(h)
    assert not round_report(h.db, open_id).revealed
