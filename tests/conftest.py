"""Shared fixtures: small real photos written to disk in several modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture
def small_png(tmp_path: Path, astronaut: np.ndarray) -> Path:
    """A 48x40 RGB crop of a real photo."""
    path = tmp_path / "small.png"
    Image.fromarray(astronaut[100:140, 180:228]).save(path)
    return path


def listing(folder: Path) -> set[str]:
    """Every file under folder, hidden temp files included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
