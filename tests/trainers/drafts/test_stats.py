"""Draft statistics: what a team reads to judge a model by how its drafts were used."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import pytest
from rapidfuzz.distance import Levenshtein
from scipy.stats import chi2_contingency
from sqlalchemy import update
from sqlmodel import col

from storage.db import Database
from storage.drafts import DraftFact, create_draft, decide_draft, expire_drafts
from storage.errors import FtbotError
from storage.models import ReplyDraft, stored_id
from storage.vocabulary import DraftOutcome
from trainers.drafts.stats import (
    draft_stats,
    draft_stats_figure,
    draft_stats_png,
    summarize,
    two_proportion_z_test,
)
from trainers.evaluation.stats import wilson_interval

MONDAY = datetime(2026, 11, 23, 9, tzinfo=UTC)  # ISO week 2026-W48
PROMPT = [{"role": "user", "content": "How do I reset my password?"}]


def facts(model: str, *, sent: int = 0, edited: int = 0, discarded: int = 0, expired: int = 0, pending: int = 0,
          start: datetime = MONDAY, latencies: list[int] | None = None,
          edits: tuple[str, str] = ("abcd", "abce")) -> list[DraftFact]:
    outcomes = ([DraftOutcome.SENT] * sent + [DraftOutcome.EDITED] * edited + [DraftOutcome.DISCARDED] * discarded
                + [DraftOutcome.EXPIRED] * expired + [None] * pending)
    out = []
    for index, outcome in enumerate(outcomes):
        latency = latencies[index % len(latencies)] if latencies else None
        draft, final = edits if outcome == DraftOutcome.EDITED else (None, None)
        out.append(DraftFact(model, outcome, start + timedelta(minutes=index), latency, 0.001, draft, final))
    return out


def test_a_models_line_says_how_often_agents_send_its_drafts_as_they_are() -> None:
    stats = summarize(facts("acme-sft-job4", sent=31, edited=10, discarded=9, latencies=[1000, 1200, 1400, 3400]),
                      current_model="acme-sft-job4")
    [model] = stats.models
    assert (model.decided, model.acceptance, model.edit_rate, model.discard_rate) == (50, 0.62, 0.2, 0.18)
    assert model.acceptance_ci == wilson_interval(31, 50)
    assert model.mean_edit_distance == pytest.approx(0.25)  # one character of four changed
    assert stats.lines() == [
        "acme-sft-job4: 62% of 50 drafts sent unedited (95% CI 48%–74%), 20% edited (mean edit distance 0.25), "
        "18% discarded; latency p50 1.2 s, p95 3.4 s."
    ]


def test_expired_and_waiting_drafts_are_not_counted_as_decided() -> None:
    stats = summarize(facts("m", sent=3, discarded=1, expired=4, pending=2), current_model=None)
    [model] = stats.models
    assert (model.drafts, model.decided, model.acceptance, model.expired, model.pending) == (10, 4, 0.75, 4, 2)
    assert model.mean_edit_distance is None and model.latency_p50_ms is None
    assert stats.lines() == ["m: 75% of 4 drafts sent unedited (95% CI 30%–95%), 0% edited, 25% discarded; "
                             "2 waiting for a decision, 4 expired undecided."]
    undecided = summarize(facts("m", expired=1), current_model=None)
    assert undecided.lines() == ["m: 1 draft, none decided yet (1 expired undecided)."]
    assert summarize([], current_model=None).lines()[0].startswith("No drafts yet")


def test_the_edit_distance_is_rapidfuzz_normalised_levenshtein() -> None:
    draft, final = "Click Forgot password.", "Click *Forgot password* on the sign-in page."
    [model] = summarize(facts("m", edited=3, edits=(draft, final)), current_model=None).models
    assert model.mean_edit_distance == pytest.approx(Levenshtein.distance(draft, final) / max(len(draft), len(final)))


def test_the_model_in_use_is_compared_with_the_one_that_drafted_before_it() -> None:
    older = facts("acme-sft-job1", sent=9, discarded=1, start=MONDAY - timedelta(days=30))
    previous = facts("acme-sft-job2", sent=29, discarded=41, start=MONDAY - timedelta(days=14))
    current = facts("acme-sft-job4", sent=31, edited=10, discarded=9, start=MONDAY)
    stats = summarize(older + previous + current, current_model="acme-sft-job4")

    assert [m.model for m in stats.models] == ["acme-sft-job4", "acme-sft-job2", "acme-sft-job1"]
    comparison = stats.comparison
    assert comparison is not None and comparison.previous.model == "acme-sft-job2"
    # The pooled z test is the chi-square test of the 2×2 table without continuity correction.
    chi2, p_value, _dof, _expected = chi2_contingency([[31, 19], [29, 41]], correction=False)
    assert comparison.p_value == pytest.approx(p_value) and comparison.z ** 2 == pytest.approx(chi2)
    assert comparison.significant
    assert stats.lines()[-1] == ("Since acme-sft-job4, agents send 62% of drafts unedited, up from 41% with "
                                 "acme-sft-job2 (p = 0.026).")
    assert stats.to_json()["comparison"] == {
        "current": "acme-sft-job4", "previous": "acme-sft-job2", "current_acceptance": 0.62,
        "previous_acceptance": pytest.approx(29 / 70), "z": pytest.approx(comparison.z),
        "p_value": pytest.approx(p_value), "significant": True,
    }


def test_no_comparison_without_a_previous_model_or_decided_drafts() -> None:
    current = facts("new", sent=5)
    assert summarize(current, current_model="new").comparison is None
    assert summarize(facts("old", pending=3, start=MONDAY - timedelta(days=7)) + current,
                     current_model="new").comparison is None
    # The model in use drafted first: there is no model before it.
    assert summarize(facts("old", sent=2) + facts("new", sent=1, start=MONDAY + timedelta(days=1)),
                     current_model="old").comparison is None
    assert summarize(current, current_model=None).comparison is None


def test_a_difference_within_chance_is_said_to_be_so() -> None:
    stats = summarize(facts("a", sent=5, discarded=5, start=MONDAY - timedelta(days=7)) + facts("b", sent=6, discarded=4),
                      current_model="b")
    assert stats.lines()[-1] == ("Since b, agents send 60% of drafts unedited, up from 50% with a "
                                 "(p = 0.65; not a significant difference yet).")


def test_two_proportion_z_test_edges() -> None:
    assert two_proportion_z_test(0, 10, 0, 20) == (0.0, 1.0)
    assert two_proportion_z_test(10, 10, 20, 20) == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_z_test(1, 0, 1, 1)


# --- from the database, and the chart -----------------------------------------------------------


def stored(db: Database, key: str, model: str, outcome: DraftOutcome | None, *, made: datetime,
           latency_ms: int = 1000) -> int:
    draft_id = stored_id(create_draft(db, request_key=key, channel="C1", thread_ts="1.1", source_ts="1.1",
                                      requested_by="U1", model=model, backend="openai", prompt=PROMPT,
                                      draft="Use the reset link.", latency_ms=latency_ms).example)
    with db.session() as session:
        session.exec(update(ReplyDraft).where(col(ReplyDraft.id) == draft_id).values(created_at=made))
    if outcome is not None:
        decide_draft(db, draft_id, outcome, by="U1", final_text=f"Use the reset link we emailed you ({key}).")
    return draft_id


def test_statistics_read_what_agents_did_with_stored_drafts(db: Database) -> None:
    now = datetime.now(UTC)
    for index, outcome in enumerate([DraftOutcome.SENT, DraftOutcome.DISCARDED]):
        stored(db, f"old:{index}", "acme-sft-job2", outcome, made=now - timedelta(days=14))
    for index, outcome in enumerate([DraftOutcome.SENT, DraftOutcome.SENT, DraftOutcome.EDITED, None]):
        stored(db, f"new:{index}", "acme-sft-job4", outcome, made=now - timedelta(days=1), latency_ms=1000 + 1000 * index)
    stored(db, "stale", "acme-sft-job4", None, made=now - timedelta(days=3))
    assert expire_drafts(db, timedelta(hours=24)) == 2

    stats = draft_stats(db, current_model="acme-sft-job4")
    current, previous = stats.models
    assert (current.model, current.sent, current.edited, current.discarded, current.expired) == ("acme-sft-job4", 2, 1, 0, 2)
    assert current.latency_p50_ms == pytest.approx(2000) and current.cost_usd is None
    assert current.mean_edit_distance is not None and 0 < current.mean_edit_distance < 1
    assert (previous.model, previous.acceptance) == ("acme-sft-job2", 0.5)
    assert stats.comparison is not None and stats.comparison.previous.model == "acme-sft-job2"
    body = stats.to_json()
    assert body["current_model"] == "acme-sft-job4" and body["drafts"] == 7
    assert body["models"][0]["acceptance_ci"] == [pytest.approx(v) for v in (wilson_interval(2, 3).low, wilson_interval(2, 3).high)]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", data[16:24])


def test_the_chart_shows_acceptance_per_model_and_iso_week(sqlite_db: Database, tmp_path) -> None:
    with pytest.raises(FtbotError, match="nothing to chart"):
        draft_stats_png(sqlite_db)
    long_name = "ft:gpt-4o-mini-2024-07-18:acme-support::9x8y7z6w"
    stored(sqlite_db, "a", "acme-sft-job2", DraftOutcome.SENT, made=MONDAY - timedelta(days=7))
    stored(sqlite_db, "b", "acme-sft-job2", DraftOutcome.DISCARDED, made=MONDAY - timedelta(days=7))
    stored(sqlite_db, "c", long_name, DraftOutcome.SENT, made=MONDAY)
    stored(sqlite_db, "d", long_name, DraftOutcome.SENT, made=MONDAY + timedelta(days=8))

    stats = draft_stats(sqlite_db, current_model=long_name)
    assert [(w.week, w.sent, w.decided) for w in stats.weekly["acme-sft-job2"]] == [("2026-W47", 1, 2)]
    assert [(w.week, w.acceptance) for w in stats.weekly[long_name]] == [("2026-W48", 1.0), ("2026-W49", 1.0)]
    figure = draft_stats_figure(stats)
    [axes] = figure.axes
    assert [tick.get_text() for tick in axes.get_xticklabels()] == ["2026-W47", "2026-W48", "2026-W49"]
    legend = [text.get_text().replace("\n", " ") for text in axes.get_legend().get_texts()]
    assert legend == [f"{long_name} (in use)", "acme-sft-job2"]

    path = tmp_path / "drafts.png"
    data = draft_stats_png(sqlite_db, path=path, current_model=long_name)
    assert _png_size(data) == (792, 484) and path.read_bytes() == data  # 7.2 × 4.4 inches at 110 dpi
