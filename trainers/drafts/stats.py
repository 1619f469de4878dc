"""Online statistics of reply drafts, per model: how often agents send a model's drafts as they are.

- Acceptance: drafts sent unedited out of the drafts an agent decided (sent + edited + discarded; expired drafts and
  drafts still waiting are counted apart), with a 95% Wilson interval.
- Edit and discard rates, and how much agents change what they edit: the mean normalised Levenshtein distance
  between draft and posted text (0: unchanged, 1: nothing in common), with ``rapidfuzz``.
- Latency from the request to the draft shown, p50 and p95.
- Whether the model in use does better than the one before it: a two-proportion z test of their acceptance rates.
  The model before it is the one whose first draft came last before the first draft of the model in use.

:func:`draft_stats` reads the database once (streamed); the bot and the CLI format :class:`DraftStats`.
:func:`draft_stats_png` charts acceptance by ISO week, one line per model.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rapidfuzz.distance import Levenshtein
from scipy.stats import norm

from storage.db import Database
from storage.drafts import DraftFact, draft_facts
from storage.errors import FtbotError
from storage.model_names import display_name
from storage.vocabulary import DraftOutcome
from trainers.evaluation.results import format_p
from trainers.evaluation.stats import Interval, wilson_interval
from trainers.plots import figure_png, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ModelDraftStats:
    """One model's drafts and what agents did with them."""

    model: str
    sent: int
    edited: int
    discarded: int
    expired: int
    pending: int  # nobody has decided yet, and it has not expired
    first_draft_at: datetime
    last_draft_at: datetime
    mean_edit_distance: float | None  # over edited drafts; None without any
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    cost_usd: float | None  # what its drafts cost (OpenAI models; None when nothing was priced)

    @property
    def drafts(self) -> int:
        return self.decided + self.expired + self.pending

    @property
    def decided(self) -> int:
        return self.sent + self.edited + self.discarded

    @property
    def acceptance(self) -> float | None:
        """Share of decided drafts sent unedited."""
        return self.sent / self.decided if self.decided else None

    @property
    def acceptance_ci(self) -> Interval:
        return wilson_interval(self.sent, self.decided)

    @property
    def edit_rate(self) -> float | None:
        return self.edited / self.decided if self.decided else None

    @property
    def discard_rate(self) -> float | None:
        return self.discarded / self.decided if self.decided else None

    def to_json(self) -> dict[str, Any]:
        ci = self.acceptance_ci
        return {
            "model": self.model, "drafts": self.drafts, "decided": self.decided, "sent": self.sent,
            "edited": self.edited, "discarded": self.discarded, "expired": self.expired, "pending": self.pending,
            "acceptance": self.acceptance, "acceptance_ci": [ci.low, ci.high] if self.decided else None,
            "edit_rate": self.edit_rate, "discard_rate": self.discard_rate,
            "mean_edit_distance": self.mean_edit_distance,
            "latency_p50_ms": self.latency_p50_ms, "latency_p95_ms": self.latency_p95_ms,
            "cost_usd": self.cost_usd,
            "first_draft_at": self.first_draft_at.isoformat(), "last_draft_at": self.last_draft_at.isoformat(),
        }

    def line(self) -> str:
        """e.g. "acme-sft-job4: 62% of 50 drafts sent unedited (95% CI 48%–74%), 20% edited (mean edit distance
        0.18), 18% discarded; latency p50 1.2 s, p95 3.4 s"."""
        name = display_name(self.model)
        waiting = _waiting(self.pending, self.expired)
        if not self.decided:
            return f"{name}: {_drafts(self.drafts)}, none decided yet" + (f" ({waiting})" if waiting else "") + "."
        ci = self.acceptance_ci
        edited = f"{self.edited / self.decided:.0%} edited"
        if self.mean_edit_distance is not None:
            edited += f" (mean edit distance {self.mean_edit_distance:.2f})"
        text = (f"{name}: {self.sent / self.decided:.0%} of {_drafts(self.decided)} sent unedited "
                f"(95% CI {ci.low:.0%}–{ci.high:.0%}), {edited}, {self.discarded / self.decided:.0%} discarded")
        if self.latency_p50_ms is not None and self.latency_p95_ms is not None:
            text += f"; latency p50 {_seconds(self.latency_p50_ms)}, p95 {_seconds(self.latency_p95_ms)}"
        if waiting:
            text += f"; {waiting}"
        return text + "."


@dataclass(frozen=True)
class AcceptanceComparison:
    """The model in use against the model that drafted before it: a two-proportion z test of acceptance."""

    current: ModelDraftStats
    previous: ModelDraftStats
    z: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value <= SIGNIFICANCE

    def to_json(self) -> dict[str, Any]:
        return {"current": self.current.model, "previous": self.previous.model,
                "current_acceptance": self.current.acceptance, "previous_acceptance": self.previous.acceptance,
                "z": self.z, "p_value": self.p_value, "significant": self.significant}

    def line(self) -> str:
        """e.g. "Since acme-sft-job4, agents send 62% of drafts unedited, up from 41% with acme-sft-job2 (p = 0.03)."."""
        now, before = self.current.acceptance or 0.0, self.previous.acceptance or 0.0
        change = ("up from" if now > before else "down from" if now < before else "the same as")
        verdict = "" if self.significant else "; not a significant difference yet"
        return (f"Since {display_name(self.current.model)}, agents send {now:.0%} of drafts unedited, {change} "
                f"{before:.0%} with {display_name(self.previous.model)} ({format_p(self.p_value)}{verdict}).")


@dataclass(frozen=True)
class DraftStats:
    """Every model's draft statistics (the model in use first, then newest first) and the comparison, if any."""

    models: list[ModelDraftStats]
    current_model: str | None
    comparison: AcceptanceComparison | None = None
    weekly: dict[str, list[WeekAcceptance]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(model.drafts for model in self.models)

    def to_json(self) -> dict[str, Any]:
        return {
            "current_model": self.current_model,
            "drafts": self.total,
            "models": [model.to_json() for model in self.models],
            "comparison": None if self.comparison is None else self.comparison.to_json(),
            # Drafts decided per ISO week of the day each was made (what the chart shows).
            "weekly": {model: [{"week": w.week, "sent": w.sent, "decided": w.decided, "acceptance": w.acceptance}
                               for w in weeks] for model, weeks in self.weekly.items() if weeks},
        }

    def lines(self) -> list[str]:
        """The statistics as plain sentences (the CLI prints them; the bot puts them into blocks)."""
        if not self.models:
            return ["No drafts yet: ask for one with @ftbot draft in a customer thread."]
        out = [model.line() for model in self.models]
        if self.comparison is not None:
            out.append(self.comparison.line())
        return out


@dataclass(frozen=True)
class WeekAcceptance:
    """One model's drafts decided in one ISO week ("2026-W48"), by the week each draft was made."""

    week: str
    sent: int
    decided: int

    @property
    def acceptance(self) -> float:
        return self.sent / self.decided


def two_proportion_z_test(successes_a: int, trials_a: int, successes_b: int, trials_b: int) -> tuple[float, float]:
    """(z, two-sided p) of the pooled two-proportion z test that rate a equals rate b.

    (0, 1) when the pooled rate is 0 or 1: the samples cannot differ. Raises ValueError without trials on a side.
    """
    if trials_a <= 0 or trials_b <= 0:
        raise ValueError("both samples need at least one trial")
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
    if spread == 0:
        return 0.0, 1.0
    z = (successes_a / trials_a - successes_b / trials_b) / spread
    return z, float(min(1.0, 2 * norm.sf(abs(z))))


def draft_stats(db: Database, *, current_model: str | None) -> DraftStats:
    """The draft statistics of every model that drafted; ``current_model``: the model in use (``/ft use``), compared
    with the one that drafted before it."""
    return summarize(draft_facts(db), current_model=current_model)


def summarize(facts: Iterable[DraftFact], *, current_model: str | None) -> DraftStats:
    """:func:`draft_stats` over any drafts (pure: what the tests feed directly)."""
    tallies: dict[str, _Tally] = {}
    for fact in facts:
        tally = tallies.get(fact.model)
        if tally is None:
            tally = tallies[fact.model] = _Tally(fact.created_at)
        tally.add(fact)
    by_age = sorted((tally.result(model) for model, tally in tallies.items()), key=lambda m: m.first_draft_at)
    comparison = _comparison(by_age, current_model)
    shown = sorted(by_age, key=lambda m: (m.model != current_model, -m.first_draft_at.timestamp()))
    return DraftStats(models=shown, current_model=current_model, comparison=comparison,
                      weekly={model: tally.weeks() for model, tally in tallies.items()})


def _comparison(by_age: list[ModelDraftStats], current_model: str | None) -> AcceptanceComparison | None:
    current = next((m for m in by_age if m.model == current_model), None)
    if current is None:
        return None
    before = [m for m in by_age if m.first_draft_at < current.first_draft_at]
    if not before or not current.decided or not before[-1].decided:
        return None
    previous = before[-1]
    z, p_value = two_proportion_z_test(current.sent, current.decided, previous.sent, previous.decided)
    return AcceptanceComparison(current, previous, z, p_value)


class _Tally:
    """Counts and samples of one model's drafts while they stream by."""

    def __init__(self, first: datetime) -> None:
        self.counts: dict[str | None, int] = defaultdict(int)
        self.first = self.last = first
        self.latencies: list[int] = []
        self.distances: list[float] = []
        self.cost: float | None = None
        self.by_week: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # week → [sent, decided]

    def add(self, fact: DraftFact) -> None:
        self.counts[fact.outcome] += 1
        self.first, self.last = min(self.first, fact.created_at), max(self.last, fact.created_at)
        if fact.latency_ms is not None:
            self.latencies.append(fact.latency_ms)
        if fact.cost_usd is not None:
            self.cost = (self.cost or 0.0) + fact.cost_usd
        if fact.outcome == DraftOutcome.EDITED and fact.draft is not None and fact.final_text is not None:
            self.distances.append(float(Levenshtein.normalized_distance(fact.draft, fact.final_text)))
        if fact.outcome in (DraftOutcome.SENT, DraftOutcome.EDITED, DraftOutcome.DISCARDED):
            year, week, _day = fact.created_at.isocalendar()
            counts = self.by_week[f"{year}-W{week:02d}"]
            counts[0] += fact.outcome == DraftOutcome.SENT
            counts[1] += 1

    def result(self, model: str) -> ModelDraftStats:
        p50, p95 = (float(v) for v in np.percentile(self.latencies, [50, 95])) if self.latencies else (None, None)
        return ModelDraftStats(
            model=model, sent=self.counts[DraftOutcome.SENT], edited=self.counts[DraftOutcome.EDITED],
            discarded=self.counts[DraftOutcome.DISCARDED], expired=self.counts[DraftOutcome.EXPIRED],
            pending=self.counts[None], first_draft_at=self.first, last_draft_at=self.last,
            mean_edit_distance=float(np.mean(self.distances)) if self.distances else None,
            latency_p50_ms=p50, latency_p95_ms=p95, cost_usd=self.cost,
        )

    def weeks(self) -> list[WeekAcceptance]:
        return [WeekAcceptance(week, sent, decided) for week, (sent, decided) in sorted(self.by_week.items())]


def _drafts(count: int) -> str:
    return f"{count} draft" if count == 1 else f"{count} drafts"


def _seconds(milliseconds: float) -> str:
    return f"{milliseconds / 1000:.1f} s"


def _waiting(pending: int, expired: int) -> str:
    parts = [f"{pending} waiting for a decision" if pending else "", f"{expired} expired undecided" if expired else ""]
    return ", ".join(part for part in parts if part)


# --- the chart ----------------------------------------------------------------------------------


def draft_stats_png(db: Database, *, path: str | Path | None = None, current_model: str | None = None) -> bytes:
    """Acceptance (drafts sent unedited out of decided ones) by ISO week, one line per model, as PNG bytes (also
    written to ``path`` if given). Raises ``FtbotError`` when no draft has been decided yet."""
    return figure_png(draft_stats_figure(draft_stats(db, current_model=current_model)), path)


def draft_stats_figure(stats: DraftStats) -> Figure:
    """The weekly acceptance chart of :func:`draft_stats_png` as a matplotlib ``Figure``."""
    series = {model: weeks for model, weeks in stats.weekly.items() if weeks}
    if not series:
        raise FtbotError("no draft has been sent, edited or discarded yet: nothing to chart")
    all_weeks = sorted({week.week for weeks in series.values() for week in weeks})
    position = {week: index for index, week in enumerate(all_weeks)}
    figure = new_figure(figsize=(7.2, 4.4), dpi=110)
    axes = figure.add_subplot()
    order = [m.model for m in stats.models if m.model in series]
    for model in order:
        weeks = series[model]
        xs = [position[week.week] for week in weeks]
        ys = [week.acceptance for week in weeks]
        label = display_name(model) + (" (in use)" if model == stats.current_model else "")
        line = axes.plot(xs, ys, marker="o", linewidth=1.6, label=label)[0]
        for x, week in zip(xs, weeks, strict=True):
            # The number of decided drafts behind each point: 2 of 2 and 40 of 50 are different evidence.
            axes.annotate(f"n={week.decided}", (x, week.acceptance), textcoords="offset points", xytext=(0, 6),
                          ha="center", fontsize=7, color=line.get_color())
    axes.set_xticks(range(len(all_weeks)), all_weeks, rotation=30 if len(all_weeks) > 6 else 0, fontsize=8)
    axes.set_xlim(-0.5, len(all_weeks) - 0.5)
    axes.set_ylim(0, 1.08)
    axes.yaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
    axes.set_ylabel("drafts sent unedited")
    axes.set_xlabel("ISO week the draft was made")
    axes.set_title("Drafts agents sent as they were, by week")
    axes.grid(True, alpha=0.3)
    # Below the axes, one model a line: model names are long ("ft:gpt-4o-mini-2024-07-18:org::id") and must stay
    # whole (they are what `/ft use` takes); the figure's tight layout makes room for it (trainers.plots.new_figure).
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3 if len(all_weeks) > 6 else -0.22), fontsize=8,
                frameon=False)
    return figure
