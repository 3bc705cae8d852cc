"""Shared fixtures: small real photos written to disk in several modes."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# A run started in the background by a non-interactive shell (``cmd &``) inherits SIGINT
# ignored, and so would every process the tests start: the Ctrl-C tests need it handled.
signal.signal(signal.SIGINT, signal.default_int_handler)


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and idle OpenMP workers spinning on a busy
    2-core machine made training tests 30x slower; one thread count for a whole module also
    keeps runs comparable bit for bit (reductions split per thread). Restored afterwards.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def image_folders(root: Path, side: int) -> dict[str, Path]:
    """Training and val folders of real photos for tiny training runs: two side x side train
    crops, one 128 x 128 val crop."""
    from skimage import data

    train, val = root / "train", root / "val"
    train.mkdir()
    val.mkdir()
    Image.fromarray(data.astronaut()[:side, 100:100 + side]).save(train / "astronaut.png")
    Image.fromarray(data.coffee()[100:100 + side, 200:200 + side]).save(train / "coffee.png")
    Image.fromarray(data.astronaut()[256:384, 256:384]).save(val / "astronaut-val.png")
    return {"root": root, "train": train, "val": val}
