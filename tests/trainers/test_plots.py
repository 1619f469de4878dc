"""Loss-curve PNGs (trainers.plots), the drawing helpers the evaluation charts share."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from trainers.plots import loss_curve_png

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
