"""Loss-curve charts with matplotlib (Agg backend: no display needed, safe in the bot's worker threads).

:func:`loss_curve_figure` builds the chart as a ``Figure`` (what tests inspect); :func:`loss_curve_png` renders it.
``new_figure`` and ``figure_png`` are shared with ``trainers.evaluation.charts``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING, Any

from storage.model_names import is_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TRAIN_COLOUR, VALID_COLOUR = "#1f77b4", "#d62728"
# Validation gets its own y axis when one loss's median is more than this many times the other's: on a shared
# axis the smaller curve would be flattened into a line along the bottom and its trend would be unreadable.
SCALE_RATIO = 3.0



def loss_curve_figure(
    points: Sequence[dict[str, Any]],
    *,
    model_name: str | None = None,
    job_id: int | None = None,
    title: str | None = None,
) -> Figure:
    """The ``[{step, train_loss, valid_loss}]`` curves of one training job.

    Titled with ``model_name`` (the registered name people use in ``/ft use``), else "job #N"; an explicit
    ``title`` wins, minus any filesystem path in it. Raises ValueError when there is no loss to draw.
    """
    train = [(p["step"], p["train_loss"]) for p in points if p.get("train_loss") is not None]
    valid = [(p["step"], p["valid_loss"]) for p in points if p.get("valid_loss") is not None]
    if not train and not valid:
        raise ValueError("no losses recorded yet: nothing to plot")
    figure = new_figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.add_subplot()
    twin = bool(train and valid) and scales_differ([loss for _, loss in train], [loss for _, loss in valid])
    valid_axes = axes.twinx() if twin else axes
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color=TRAIN_COLOUR, linewidth=1.6)
    if valid:
        valid_label = "validation loss (right axis)" if twin else "validation loss"
        valid_axes.plot(*zip(*valid, strict=True), label=valid_label, color=VALID_COLOUR, marker="o",
                        markersize=3.5, linewidth=1.2)
    if twin:
        _colour_y_axis(axes, "train loss", TRAIN_COLOUR)
        _colour_y_axis(valid_axes, "validation loss", VALID_COLOUR)
    else:
        axes.set_ylabel("loss")
    _integer_steps(axes)
    axes.set_xlabel("step")
    axes.set_title(without_paths(title) if title else loss_chart_title(model_name=model_name, job_id=job_id))
    axes.grid(True, alpha=0.3)
    # One legend for both axes, on the twin when there is one: it is drawn last, so no curve covers the legend.
    handles = axes.get_legend_handles_labels()[0]
    if twin:
        handles += valid_axes.get_legend_handles_labels()[0]
    valid_axes.legend(handles=handles, loc="upper right")
    return figure


def loss_curve_png(
    points: Sequence[dict[str, Any]],
    *,
    model_name: str | None = None,
    job_id: int | None = None,
    title: str | None = None,
    path: str | Path | None = None,
) -> bytes:
    """:func:`loss_curve_figure` as PNG bytes (also written to ``path`` if given)."""
    return figure_png(loss_curve_figure(points, model_name=model_name, job_id=job_id, title=title), path)


def loss_chart_title(*, model_name: str | None = None, job_id: int | None = None) -> str:
    """The loss chart's title, e.g. ``Training loss · acme-support-3 (job #7)``.

    A path is never shown: when ``model_name`` is one (a local job's adapter directory), the job number stands in.
    """
    name = model_name.strip() if model_name and not is_path(model_name.strip()) else None
    job = f"job #{job_id}" if job_id is not None else None
    if name and job:
        return f"Training loss · {name} ({job})"
    if name or job:
        return f"Training loss · {name or job}"
    return "Training loss"


def without_paths(text: str) -> str:
    """``text`` minus its path-like words, so a caller's title cannot leak a server path into a shared chart."""
    kept = [word for word in text.split() if not is_path(word.strip("\"'()[]<>,;"))]
    return " ".join(kept).rstrip(" :·-—") or "Training loss"


def scales_differ(train_losses: Sequence[float], valid_losses: Sequence[float]) -> bool:
    """Whether the two series need separate y axes (see ``SCALE_RATIO``); medians, so one spike decides nothing."""
    if not train_losses or not valid_losses:
        return False
    low, high = sorted((median(train_losses), median(valid_losses)))
    if low < 0:
        return False  # Losses here are never negative; a ratio of signed numbers says nothing about scale.
    return high > SCALE_RATIO * low


def _colour_y_axis(axes: Axes, label: str, colour: str) -> None:
    # With two y axes the colour is what says which curve an axis measures.
    axes.set_ylabel(label, color=colour)
    axes.tick_params(axis="y", colors=colour)


def _integer_steps(axes: Axes) -> None:
    # Training steps are counts: a tick at step 2.5 names a step that never happened.
    from matplotlib.ticker import MaxNLocator  # Local: heavy, like matplotlib in new_figure.

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def new_figure(*, figsize: tuple[float, float], dpi: int) -> Figure:
    """A matplotlib ``Figure`` on the Agg backend, laid out by the tight layout engine on every draw.

    The object API, not pyplot: no global figure state shared between the bot's threads. matplotlib is
    imported here, not at module import, so the bot pays for it only when it draws. The layout runs at draw
    time (not once before saving) so a figure's labels and legends fit however it is rendered.
    """
    import matplotlib  # Local: heavy (see the docstring).

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Local: heavy, like matplotlib above.
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=dpi, layout="tight")
    FigureCanvasAgg(figure)  # Attaches itself: ``figure.canvas.draw()`` then lays out and renders off-screen.
    return figure


def figure_png(figure: Figure, path: str | Path | None = None) -> bytes:
    """``figure`` as PNG bytes (also written to ``path`` if given)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
