"""Loss-curve PNGs (trainers.plots), the drawing helpers the evaluation charts share."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from storage.model_names import is_path
from trainers.plots import loss_chart_title, loss_curve_figure, loss_curve_png, scales_differ

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    return struct.unpack(">II", data[16:24])


def test_loss_curve_is_a_png_of_the_figure_size_and_is_written_to_path(tmp_path: Path) -> None:
    points = [{"step": step, "train_loss": 2.0 / step, "valid_loss": 2.2 / step if step % 5 == 0 else None}
              for step in range(1, 21)]
    path = tmp_path / "loss.png"
    data = loss_curve_png(points, title="Job #1", path=path)
    assert _png_size(data) == (640, 360)  # 6.4 × 3.6 inches at 100 dpi
    assert path.read_bytes() == data


def test_loss_curve_without_losses_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no losses recorded yet"):
        loss_curve_png([{"step": 1, "train_loss": None}])


def _losses(train: float, valid: float, steps: int = 12) -> list[dict[str, float | int | None]]:
    """A decaying train loss from ``train`` and a validation loss from ``valid`` every third step."""
    return [{"step": step, "train_loss": train / step ** 0.5, "valid_loss": valid / step ** 0.5 if step % 3 == 0 else None}
            for step in range(1, steps + 1)]


def test_loss_chart_is_titled_with_the_registered_model_name() -> None:
    title = loss_curve_figure(_losses(2.0, 2.1), model_name="acme-support-3", job_id=7).axes[0].get_title()
    assert title == "Training loss · acme-support-3 (job #7)"


@pytest.mark.parametrize("adapter_path", ["/srv/ftbot/home/adapters/job7", "~/ftbot/adapters/job7", "runs/job7/adapter",
                                          "C:\\ftbot\\adapters\\job7"])
def test_loss_chart_never_shows_a_path_and_falls_back_to_the_job_number(adapter_path: str) -> None:
    title = loss_curve_figure(_losses(2.0, 2.1), model_name=adapter_path, job_id=7).axes[0].get_title()
    assert title == "Training loss · job #7"
    # An old-style caller title that embeds the adapter directory keeps its words but loses the path.
    title = loss_curve_figure(_losses(2.0, 2.1), title=f"Job #7: {adapter_path}").axes[0].get_title()
    assert title == "Job #7"


def test_a_hugging_face_model_id_is_a_name_not_a_path() -> None:
    assert not is_path("Qwen/Qwen2.5-0.5B-Instruct") and not is_path("ft:gpt-4o-mini:acme::abc123")
    assert loss_chart_title(model_name="Qwen/Qwen2.5-0.5B-Instruct") == "Training loss · Qwen/Qwen2.5-0.5B-Instruct"


def test_loss_chart_steps_are_whole_numbers_even_for_a_short_run() -> None:
    # Three steps: matplotlib's default locator would tick 1.00, 1.25, 1.50, ...
    figure = loss_curve_figure([{"step": step, "train_loss": 1.0 / step} for step in (1, 2, 3)], job_id=1)
    figure.canvas.draw()
    axes = figure.axes[0]
    low, high = axes.get_xlim()
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    labels = [label.get_text() for label in axes.get_xticklabels() if label.get_text()]
    assert labels and all(label.lstrip("−-").isdigit() for label in labels)


def test_validation_gets_its_own_axis_only_when_its_scale_differs() -> None:
    similar = loss_curve_figure(_losses(2.0, 2.3), job_id=1)
    assert len(similar.axes) == 1 and similar.axes[0].get_ylabel() == "loss"

    different = loss_curve_figure(_losses(2.0, 0.1), job_id=1)
    assert len(different.axes) == 2
    train_axes, valid_axes = different.axes
    assert train_axes.get_ylabel() == "train loss" and valid_axes.get_ylabel() == "validation loss"
    assert train_axes.yaxis.label.get_color() != valid_axes.yaxis.label.get_color()
    # One legend names both curves, so a reader can match each to its axis.
    legend = valid_axes.get_legend()
    assert legend is not None and train_axes.get_legend() is None
    assert [text.get_text() for text in legend.get_texts()] == ["train loss", "validation loss (right axis)"]


def test_scale_rule_compares_medians_so_one_spike_does_not_split_the_axes() -> None:
    assert not scales_differ([1.0, 0.9, 0.8, 40.0], [0.9, 0.85])
    assert scales_differ([2.0, 1.5, 1.2], [0.2, 0.15])
    assert scales_differ([0.2, 0.15], [2.0, 1.5, 1.2])
    assert not scales_differ([], [0.2])


def test_loss_chart_legend_and_labels_fit_in_the_image() -> None:
    figure = loss_curve_figure(_losses(2.0, 0.1), model_name="acme-support-3", job_id=7)
    figure.canvas.draw()
    for axes in figure.axes:
        box = axes.get_tightbbox()  # in display pixels, tick labels, axis labels, title and legend included
        assert box is not None
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= figure.bbox.x1 and box.y1 <= figure.bbox.y1
