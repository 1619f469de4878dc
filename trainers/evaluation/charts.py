"""Evaluation charts as PNG bytes (matplotlib's object API on the Agg backend: no display, thread-safe).

- :func:`results_figure` / :func:`results_png`: the candidate's win rate on decisive votes with its 95% Wilson
  interval (and the prompt-bootstrap interval when there is one), the 50% line, and the vote counts as a
  stacked bar.
- :func:`report_png`: that chart for a round's report, blind while the round is open.
- With a leaderboard: a second panel with Bradley–Terry ratings on the Elo scale and bootstrap 95% error bars.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from trainers.evaluation.generation import display_name
from trainers.evaluation.results import RoundReport
from trainers.evaluation.stats import ABSummary, Leaderboard
from trainers.plots import figure_png, new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_CANDIDATE, _BASELINE = "#2a9d8f", "#e76f51"


@dataclass(frozen=True)
class _BarStyle:
    """How one vote outcome is drawn in the stacked bar (and so in the legend)."""

    colour: str
    hatch: str = ""
    hatch_colour: str = "white"
    count_colour: str = "white"  # the count written on the bar: readable on ``colour``


# A tie and "both bad" are different verdicts on the candidate, so they differ in lightness and in
# pattern, not just in a shade of grey: told apart in greyscale prints and by colour-blind readers too.
_TIE = _BarStyle("#ced4da", hatch="//", hatch_colour="#6c757d", count_colour="black")
_BAD = _BarStyle("#495057", hatch="xx", hatch_colour="#adb5bd")
# Labels that carry a model name are wrapped at these many characters: long names
# ("ft:gpt-4o-mini-2024-07-18:org::id") would otherwise run past the figure's edge and be cut from the image.
_LABEL_WIDTH = 30  # legend entries and the ratings panel's model names
_TEXT_WIDTH = 90  # the title and the axis label
_LEGEND_COLUMNS = 2


def results_figure(
    summary: ABSummary,
    *,
    candidate: str,
    baseline: str,
    leaderboard: Leaderboard | None = None,
    title: str | None = None,
) -> Figure:
    """The round's result (and the leaderboard of all models when given and larger than two)."""
    show_board = leaderboard is not None and len(leaderboard.ratings) > 2
    panels = 2 if show_board else 1
    figure = new_figure(figsize=(7.2, 2.9 * panels + 0.4), dpi=110)
    axes = figure.add_subplot(panels, 1, 1)
    _win_rate_panel(axes, summary, candidate, baseline)
    if show_board:
        assert leaderboard is not None
        _ratings_panel(figure.add_subplot(2, 1, 2), leaderboard)
    figure.suptitle(_wrapped(title or f"{candidate} vs {baseline}", _TEXT_WIDTH), fontsize=11)
    return figure


def results_png(
    summary: ABSummary,
    *,
    candidate: str,
    baseline: str,
    leaderboard: Leaderboard | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> bytes:
    """:func:`results_figure` as PNG bytes (also written to ``path`` if given)."""
    figure = results_figure(summary, candidate=candidate, baseline=baseline, leaderboard=leaderboard, title=title)
    return figure_png(figure, path)


def report_png(report: RoundReport, path: str | Path | None = None) -> bytes:
    """A round's chart: the models keep neutral labels until voting is over (``RoundReport.revealed``)."""
    candidate, baseline = (report.candidate, report.baseline) if report.revealed else ("candidate", "baseline")
    return results_png(report.summary, candidate=candidate, baseline=baseline, leaderboard=report.leaderboard,
                       title=f"Round #{report.round.id}: {candidate} vs {baseline}", path=path)


def _win_rate_panel(axes: Axes, summary: ABSummary, candidate: str, baseline: str) -> None:
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.5, 1.9)
    axes.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    axes.set_yticks([1, 0], ["win rate\n(decisive)", "all votes"])
    axes.xaxis.set_major_formatter(lambda value, _pos: f"{value:.0%}")
    if summary.win_rate is not None:
        low, high = summary.ci.low, summary.ci.high
        axes.errorbar(
            summary.win_rate, 1, xerr=[[summary.win_rate - low], [high - summary.win_rate]], fmt="o",
            color=_CANDIDATE, ecolor=_CANDIDATE, capsize=6, markersize=8, linewidth=2, label="95% Wilson interval",
        )
        boot = summary.prompt_bootstrap_ci
        if boot is not None:
            axes.plot([boot.low, boot.high], [0.72, 0.72], color="#264653", linewidth=1.2, marker="|",
                      label="95% bootstrap over questions")
        # Keep the label inside the axes whichever end of the scale the estimate is at.
        anchor = min(max(summary.win_rate, 0.22), 0.78)
        axes.text(anchor, 1.45, f"{summary.win_rate:.1%}  [{low:.1%}, {high:.1%}]  {_p(summary.p_value)}",
                  ha="center", va="center", fontsize=9)
    else:
        axes.text(0.5, 1, "no decisive votes yet", ha="center", va="center", fontsize=9)
    total = summary.total
    if total:
        left = 0.0
        for count, style, label in (
            (summary.wins, _BarStyle(_CANDIDATE), f"{candidate} better"),
            (summary.ties, _TIE, "tie"),
            (summary.both_bad, _BAD, "both bad"),
            (summary.losses, _BarStyle(_BASELINE), f"{baseline} better"),
        ):
            if count:
                share = count / total
                axes.barh(0, share, left=left, color=style.colour, hatch=style.hatch, edgecolor=style.hatch_colour,
                          linewidth=0, height=0.4, label=f"{label} ({count})")
                if share > 0.05:
                    axes.text(left + share / 2, 0, f"{count}", ha="center", va="center", fontsize=8,
                              color=style.count_colour, fontweight="bold")
                left += share
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        # Below the axes and centred on the figure, not on the axes: long model names in the ratings panel push
        # both axes right, and a legend centred on them would then run off the right edge. The figure's tight
        # layout makes room for it below (see trainers.plots.new_figure).
        from matplotlib.transforms import blended_transform_factory  # Local: heavy, like all of matplotlib here.

        axes.legend(handles, [_wrapped(label) for label in labels], loc="upper center", bbox_to_anchor=(0.5, -0.28),
                    bbox_transform=blended_transform_factory(axes.figure.transFigure, axes.transAxes),
                    ncol=_LEGEND_COLUMNS, fontsize=7, frameon=False)
    axes.set_xlabel(_wrapped(f"share of votes for {candidate}", _TEXT_WIDTH), fontsize=8)
    axes.grid(True, axis="x", alpha=0.3)


def _ratings_panel(axes: Axes, board: Leaderboard) -> None:
    ratings = list(reversed(board.ratings))  # best at the top
    names = [_wrapped(display_name(r.model)) for r in ratings]
    values = [r.rating for r in ratings]
    lower = [r.rating - r.ci_low for r in ratings]
    upper = [r.ci_high - r.rating for r in ratings]
    axes.errorbar(values, range(len(ratings)), xerr=[lower, upper], fmt="o", color="#264653", capsize=5)
    axes.set_yticks(range(len(ratings)), names)
    axes.axvline(1000, color="black", linewidth=0.6, linestyle=":")
    axes.set_xlabel(f"Bradley–Terry rating (Elo scale, 95% bootstrap, {board.battles} votes)")
    axes.grid(True, axis="x", alpha=0.3)


def _wrapped(text: str, width: int = _LABEL_WIDTH) -> str:
    return textwrap.fill(text, width, break_long_words=True)


def _p(value: float) -> str:
    return "p < 0.001" if value < 0.001 else f"p = {value:.3f}"
