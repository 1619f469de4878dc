"""The evaluation result chart (trainers.evaluation.charts): what a reader of the posted image relies on."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch

from trainers.evaluation.charts import figure_png, results_figure, results_png
from trainers.evaluation.stats import ABSummary, ABVote, ab_summary, bradley_terry

# Registered names as they really come: an OpenAI fine-tune id and a local run's name.
LONG_CANDIDATE = "Qwen2.5-0.5B-Instruct-sft-job12"
LONG_BASELINE = "ft:gpt-4o-mini-2024-07-18:acme-support::AbCdEf12"


def _summary(wins: int = 7, losses: int = 4, ties: int = 3, both_bad: int = 2) -> ABSummary:
    choices = ["A"] * wins + ["B"] * losses + ["tie"] * ties + ["bad"] * both_bad
    return ab_summary([ABVote(i, "U1", choice, "A") for i, choice in enumerate(choices)], bootstrap_rounds=100)


def _vote_legend(figure: Figure) -> Legend:
    legend = figure.axes[0].get_legend()
    assert legend is not None
    return legend


def _bars(figure: Figure) -> dict[str, BarContainer]:
    """The stacked vote bar's segments by legend label ("tie (3)" → its bars)."""
    return {str(c.get_label()): c for c in figure.axes[0].containers if isinstance(c, BarContainer)}


@pytest.mark.parametrize("with_board", [False, True])
@pytest.mark.parametrize(("candidate", "baseline"), [("cand", "base"), (LONG_CANDIDATE, LONG_BASELINE), ("x" * 120, "y" * 90)])
def test_vote_legend_lies_inside_the_saved_image(candidate: str, baseline: str, with_board: bool) -> None:
    board = bradley_terry([(candidate, baseline, 1.0), ("c2", baseline, 0.0), (candidate, "c2", 0.5)] * 5, bootstrap_rounds=20)
    figure = results_figure(_summary(), candidate=candidate, baseline=baseline, leaderboard=board if with_board else None)
    figure.canvas.draw()  # runs the figure's layout engine, as saving does
    box, image = _vote_legend(figure).get_window_extent(), figure.bbox
    assert image.x0 <= box.x0 and box.x1 <= image.x1 and image.y0 <= box.y0 and box.y1 <= image.y1
    # Every entry is there, the long names included (wrapped, not cut).
    texts = [" ".join(text.get_text().split()) for text in _vote_legend(figure).get_texts()]
    assert len(texts) == 6 and texts[-1].replace(" ", "") == f"{baseline}better(4)"


def test_tie_and_both_bad_are_drawn_distinguishably() -> None:
    figure = results_figure(_summary(ties=3, both_bad=2), candidate="cand", baseline="base")
    bars = _bars(figure)
    assert set(bars) == {"cand better (7)", "tie (3)", "both bad (2)", "base better (4)"}
    tie, bad = bars["tie (3)"].patches[0], bars["both bad (2)"].patches[0]
    assert tie.get_facecolor() != bad.get_facecolor()
    assert tie.get_hatch() and bad.get_hatch() and tie.get_hatch() != bad.get_hatch()
    # The legend's swatches carry the same difference, or the reader could not match them to the bar.
    handles = dict(zip([t.get_text() for t in _vote_legend(figure).get_texts()], _vote_legend(figure).legend_handles, strict=True))
    tie_key, bad_key = handles["tie (3)"], handles["both bad (2)"]
    assert isinstance(tie_key, Patch) and isinstance(bad_key, Patch)
    assert tie_key.get_facecolor() != bad_key.get_facecolor()
    assert tie_key.get_hatch() != bad_key.get_hatch()


def test_png_is_the_figure_rendered_and_written_to_path(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    data = results_png(_summary(), candidate="cand", baseline="base", title="Round #3: cand vs base", path=path)
    assert path.read_bytes() == data
    figure = results_figure(_summary(), candidate="cand", baseline="base", title="Round #3: cand vs base")
    assert figure_png(figure) == data
    assert figure.get_suptitle() == "Round #3: cand vs base"
