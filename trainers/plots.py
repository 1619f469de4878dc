"""Loss-curve PNGs with matplotlib (Agg backend: no display needed, safe in the bot's worker threads).

``new_figure`` and ``figure_png`` are shared with ``trainers.evaluation.charts``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def loss_curve_png(points: Sequence[dict[str, Any]], *, title: str = "Training loss", path: str | Path | None = None) -> bytes:
    """Render ``[{step, train_loss, valid_loss}]`` as a PNG (bytes; also written to ``path`` if given).

    Raises ValueError when there is no loss to draw.
    """
    train = [(p["step"], p["train_loss"]) for p in points if p.get("train_loss") is not None]
    valid = [(p["step"], p["valid_loss"]) for p in points if p.get("valid_loss") is not None]
    if not train and not valid:
        raise ValueError("no losses recorded yet: nothing to plot")
    figure = new_figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.add_subplot()
    if train:
        axes.plot(*zip(*train, strict=True), label="train loss", color="#1f77b4", linewidth=1.6)
    if valid:
        axes.plot(*zip(*valid, strict=True), label="validation loss", color="#d62728", marker="o", markersize=3.5, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    return figure_png(figure, path)


def new_figure(*, figsize: tuple[float, float], dpi: int) -> Figure:
    """A matplotlib ``Figure`` on the Agg backend.

    The object API, not pyplot: no global figure state shared between the bot's threads. matplotlib is
    imported here, not at module import, so the bot pays for it only when it draws.
    """
    import matplotlib  # Local: heavy (see the docstring).

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure  # Local: heavy, like matplotlib above.

    return Figure(figsize=figsize, dpi=dpi)


def figure_png(figure: Figure, path: str | Path | None = None) -> bytes:
    """Lay out ``figure`` and return it as PNG bytes (also written to ``path`` if given)."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data
