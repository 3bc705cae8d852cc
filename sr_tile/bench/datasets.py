"""Benchmark datasets: which images, which HR/LR pairs, and where made LR images are cached.

A dataset is given as

* a folder of HR images (``val/``): each HR is mod-cropped to the scale and its LR made by
  MATLAB-style antialiased bicubic, then cached;
* a folder in the ClassSR layout (``Test2K/HR/X4`` + ``Test2K/LR/X4``): pairs are matched by file
  stem (``0801.png`` or ``0801x4.png`` in ``LR/X4``); an HR without an LR gets a made one;
* a name (``Test2K``, ``Test4K``, ``Test8K``, ``F2K``, ``DIV2K-val``, or any folder name),
  looked up under ``--data-root`` or ``$SR_TILE_DATA``.

**The LR cache** lives in the user's cache folder, never in the dataset: ``$SR_TILE_CACHE``, else
``$XDG_CACHE_HOME/sr-tile``, else ``~/.cache/sr-tile``, under ``lr/``. A file is
``<stem>-<key>.png`` where ``key`` hashes the HR file's resolved path, size and mtime, the scale
and the LR recipe version, so an edited HR or a changed recipe never reuses a stale LR, and
read-only datasets (``shared/data/val``) work as they are.

Every image is scored as 8-bit RGB: 16-bit is scaled (x/257, rounded), gray is replicated to
RGB, alpha is dropped, float images are taken as 0-1.
"""

from __future__ import annotations

import hashlib
import math
import io
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from sr_tile.errors import ConfigError, ImageReadError, ImageWriteError
from sr_tile.imresize import imresize_np
from sr_tile.io import read_image
from sr_tile.io.atomic import write_bytes_atomic
from sr_tile.tiler import output_length
from sr_tile.paths import IMAGE_SUFFIXES

__all__ = [
    "CACHE_ENV",
    "DATA_ENV",
    "KNOWN_DATASETS",
    "LR_RECIPE",
    "Dataset",
    "LRCache",
    "Pair",
    "Sample",
    "crop_note",
    "default_cache_dir",
    "image_files",
    "load_pair",
    "make_lr",
    "mod_crop",
    "resolve_dataset",
    "to_rgb8",
    "write_png_atomic",
]

DATA_ENV = "SR_TILE_DATA"
CACHE_ENV = "SR_TILE_CACHE"
#: Bump when the way LR images are made changes: old cache entries are then ignored.
LR_RECIPE = "modcrop+matlab-bicubic-aa+uint8-v2"  # v2: clean crops at x2.5, x3.7

#: Names the papers use, with the folder names they are commonly stored under.
KNOWN_DATASETS: dict[str, tuple[str, ...]] = {
    "Test2K": ("Test2K",),
    "Test4K": ("Test4K",),
    "Test8K": ("Test8K",),
    "F2K": ("F2K", "Flickr2K-test", "Flickr2K_test"),
    "DIV2K-val": ("DIV2K-val", "DIV2K_val", "DIV2K_valid", "DIV2K_valid_HR", "DIV2K-valid"),
}
_DIV8K_SETS = ("Test2K", "Test4K", "Test8K")


@dataclass(frozen=True)
class Sample:
    """One benchmark image: its HR file and, in the ClassSR layout, its given LR file."""

    name: str  # file stem, unique within the dataset
    hr_path: Path
    lr_path: Path | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    layout: str  # "hr-folder" | "classsr"
    scale: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def given_lr(self) -> int:
        return sum(s.lr_path is not None for s in self.samples)


@dataclass
class Pair:
    """A loaded LR/HR pair, 8-bit RGB, HR mod-cropped so that HR = scale * LR exactly."""

    lr: np.ndarray
    hr: np.ndarray
    lr_source: str  # "given" | "cache" | "made"
    io_s: float = 0.0  # decode + LR making (or cache read), seconds


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name, hidden files skipped."""
    try:
        entries = list(folder.iterdir())
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None
    return sorted(
        (p for p in entries
         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _child_dir(parent: Path, name: str) -> Path | None:
    """``parent/name`` as a folder, matched case-insensitively if not exactly."""
    exact = parent / name
    if exact.is_dir():
        return exact
    try:
        for child in parent.iterdir():
            if child.name.lower() == name.lower() and child.is_dir():
                return child
    except OSError:
        return None
    return None


def _how_to_prepare(name: str) -> str:
    if name in _DIV8K_SETS:
        return "build it with: sr-tile data prepare-div8k DIV8K_HR DEST"
    return (f"put its HR images in a folder named {name} there (plain HR images, or the "
            f"ClassSR layout HR/X4 + LR/X4)")


def _canonical(spec: str) -> str | None:
    for name, aliases in KNOWN_DATASETS.items():
        if spec.lower() in (a.lower() for a in (name, *aliases)):
            return name
    return None


def _data_root(data_root: str | Path | None) -> tuple[Path | None, str]:
    if data_root is not None:
        return Path(data_root).expanduser(), "--data-root"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return None, ""


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or spec.startswith((".", "~"))


def resolve_dataset(spec: str, *, scale: int = 4, data_root: str | Path | None = None) -> Dataset:
    """A folder path or a dataset name -> :class:`Dataset`; ConfigError with a hint if not found.

    A path that exists is used as it is. Anything else that does not look like a path is a name,
    looked up (case-insensitively, with the usual aliases of the known names) under
    ``data_root``, else ``$SR_TILE_DATA``.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        return scan_folder(path, scale=scale)
    if path.exists():
        raise ConfigError(f"{spec}: not a folder (a dataset is a folder of images or a name)")
    if _looks_like_path(spec):
        raise ConfigError(f"{spec}: no such folder")
    name = _canonical(spec) or spec
    root, source = _data_root(data_root)
    if root is None:
        known = ", ".join(KNOWN_DATASETS)
        raise ConfigError(
            f"dataset {spec!r} is not a folder, and no data root is set to look it up in "
            f"(set --data-root or {DATA_ENV}; known names: {known}; {_how_to_prepare(name)})"
        )
    if not root.is_dir():
        raise ConfigError(f"data root {root} (from {source}) is not a folder")
    for candidate in KNOWN_DATASETS.get(name, (spec,)):
        folder = _child_dir(root, candidate)
        if folder is not None:
            dataset = scan_folder(folder, scale=scale)
            return Dataset(name, dataset.root, dataset.layout, dataset.scale, dataset.samples)
    raise ConfigError(
        f"dataset {name!r} not found under {root} (set --data-root or {DATA_ENV}; "
        f"{_how_to_prepare(name)})"
    )


def _lr_index(folder: Path, scale: int) -> dict[str, Path]:
    """LR files by the HR stem they belong to: ``0801.png`` and ``0801x4.png`` both map to 0801."""
    index: dict[str, Path] = {}
    suffix = re.compile(rf"(?i)x{scale}$")
    for p in image_files(folder):
        index.setdefault(suffix.sub("", p.stem), p)
    return index


def _samples(hr_files: list[Path], lr_index: dict[str, Path] | None = None) -> list[Sample]:
    seen: dict[str, Path] = {}
    samples = []
    for p in hr_files:
        if p.stem in seen:
            raise ConfigError(
                f"{p}: two HR images share the name {p.stem!r} ({seen[p.stem].name}); "
                "results are keyed by name, rename one"
            )
        seen[p.stem] = p
        samples.append(Sample(p.stem, p, (lr_index or {}).get(p.stem)))
    return samples


def scan_folder(folder: Path, *, scale: int) -> Dataset:
    """Detect the layout of ``folder`` and list its samples."""
    hr_dir = _child_dir(folder, "HR")
    if hr_dir is not None:
        scaled = _child_dir(hr_dir, f"X{scale}")
        if scaled is None and not image_files(hr_dir):
            others = sorted(p.name for p in hr_dir.iterdir() if p.is_dir())
            raise ConfigError(
                f"{folder}: ClassSR layout without HR/X{scale} (found: {', '.join(others) or 'none'}); "
                f"pick the matching --scale"
            )
        hr_dir = scaled or hr_dir
        hr_files = image_files(hr_dir)
        if not hr_files:
            raise ConfigError(f"{hr_dir}: no images found")
        lr_dir = _child_dir(folder, "LR")
        lr_dir = _child_dir(lr_dir, f"X{scale}") if lr_dir is not None else None
        lr_index = _lr_index(lr_dir, scale) if lr_dir is not None else {}
        return Dataset(folder.name, folder, "classsr", scale, _samples(hr_files, lr_index))
    hr_files = image_files(folder)
    if not hr_files:
        raise ConfigError(
            f"{folder}: no images found (expected image files, or the ClassSR layout "
            f"HR/X{scale} + LR/X{scale})"
        )
    return Dataset(folder.name, folder, "hr-folder", scale, _samples(hr_files))


# ---------------------------------------------------------------------------------------------
# Pixels


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8/uint16/float -> (H, W, 3) uint8: 16-bit /257 rounded, gray replicated,
    alpha dropped, float taken as 0-1."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[..., None]
    color = arr[..., : 1 if arr.shape[2] in (1, 2) else 3]
    if color.dtype == np.uint16:
        color = np.floor(color.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif color.dtype.kind == "f":
        color = np.floor(np.clip(color.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif color.dtype != np.uint8:
        raise ImageReadError(f"unsupported pixel type {color.dtype}")
    if color.shape[2] == 1:
        color = np.repeat(color, 3, axis=2)
    return np.ascontiguousarray(color)


def lr_length(length: int, scale: float) -> int:
    """The LR length of an HR length: round-half-up(length / scale)."""
    return int(math.floor(round(length / scale, 9) + 0.5))


def clean_multiple(scale: float) -> int | None:
    """The step of the HR lengths that divide cleanly (HR = scale * LR exactly): an integer
    ``scale`` itself, else the numerator p of p/q (decimal, lowest terms; 2.5 = 5/2,
    3.7 = 37/10); None for a fraction too fine to crop to (p > 256)."""
    p = Fraction(repr(float(scale))).numerator
    return p if p <= 256 or float(scale).is_integer() else None


def _exact_length(length: int, scale: float) -> int:
    """The largest HR length <= ``length`` that is ``scale`` x an integer LR length: a multiple
    of an integer ``scale`` or of a fraction's numerator (:func:`clean_multiple`). For a finer
    fraction, the largest length that round-half-up(scale * lr_length(n)) gives back."""
    step = clean_multiple(scale)
    if step is not None:
        return length - length % step
    n = length
    while n > 0 and output_length(lr_length(n, scale), scale) != n:
        n -= 1
    return n


def mod_crop(img: np.ndarray, scale: float) -> np.ndarray:
    """Crop the bottom/right so that HR = scale x LR exactly (ClassSR/BasicSR modcrop at an
    integer ``scale``; multiples of 5 px at x2.5, of 37 px at x3.7)."""
    h, w = img.shape[:2]
    return img[: _exact_length(h, scale), : _exact_length(w, scale)]


def crop_note(scale: float) -> str:
    """How the HR of a bench at ``scale`` is cropped (said in the report)."""
    if float(scale).is_integer():
        return f"HR mod-cropped to multiples of {int(scale)} px"
    step = clean_multiple(scale)
    if step is not None:
        return (f"HR cropped at the bottom/right to multiples of {step} px, so that LR = "
                f"HR / {scale:g} exactly (LR multiples of {round(step / scale)} px)")
    return (f"HR cropped at the bottom/right to the largest sizes that round-half-up({scale:g} "
            "x LR) gives back")


def make_lr(hr: np.ndarray, scale: float) -> np.ndarray:
    """LR of a mod-cropped 8-bit HR: MATLAB ``imresize(HR, 1/scale, 'bicubic')``, uint8; at a
    non-integer scale, ``imresize`` to the LR size (each axis at its own LR/HR ratio)."""
    if float(scale).is_integer():
        return imresize_np(hr, 1.0 / scale)
    h, w = hr.shape[:2]
    return imresize_np(hr, out_size=(lr_length(h, scale), lr_length(w, scale)))


# ---------------------------------------------------------------------------------------------
# LR cache


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "sr-tile"


def write_png_atomic(path: Path, pixels: np.ndarray, *, compress_level: int = 6) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=compress_level)
    write_bytes_atomic(path, buf.getvalue())


class LRCache:
    """Made LR images on disk, keyed by the HR file (path, size, mtime), scale and recipe.

    ``folder`` None disables the cache. A cache that cannot be written (read-only home, full
    disk) is not an error: the LR is simply made again next time.
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder).expanduser() / "lr" if folder is not None else None
        self.write_errors: list[str] = []

    def path_for(self, hr_path: Path, scale: int) -> Path | None:
        if self.folder is None:
            return None
        st = hr_path.stat()
        ident = f"{hr_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|x{scale}|{LR_RECIPE}"
        key = hashlib.sha256(ident.encode()).hexdigest()[:20]
        return self.folder / f"{hr_path.stem}-x{scale}-{key}.png"

    def get(self, hr_path: Path, scale: int, shape: tuple[int, int]) -> np.ndarray | None:
        path = self.path_for(hr_path, scale)
        if path is None or not path.is_file():
            return None
        try:
            lr = to_rgb8(read_image(path).pixels)
        except ImageReadError:
            return None  # damaged entry: made again and replaced
        return lr if lr.shape[:2] == shape else None

    def put(self, hr_path: Path, scale: int, lr: np.ndarray) -> None:
        path = self.path_for(hr_path, scale)
        if path is None:
            return
        try:
            write_png_atomic(path, lr, compress_level=1)
        except ImageWriteError as exc:
            self.write_errors.append(str(exc))


def load_pair(sample: Sample, scale: float, cache: LRCache) -> Pair:
    """Decode HR (and the given LR, or the cached/made one). ImageReadError for a bad file."""
    import time

    start = time.perf_counter()
    hr = mod_crop(to_rgb8(read_image(sample.hr_path).pixels), scale)
    h, w = hr.shape[:2]
    if h < scale or w < scale:
        raise ImageReadError(f"{sample.hr_path}: {w}x{h} is too small for x{scale:g}")
    want = (lr_length(h, scale), lr_length(w, scale))
    if sample.lr_path is not None:
        lr = to_rgb8(read_image(sample.lr_path).pixels)
        if lr.shape[:2] != want:
            raise ImageReadError(
                f"{sample.lr_path}: LR is {lr.shape[1]}x{lr.shape[0]}, but the mod-cropped HR "
                f"{w}x{h} needs {want[1]}x{want[0]} at x{scale}"
            )
        return Pair(lr, hr, "given", time.perf_counter() - start)
    lr = cache.get(sample.hr_path, scale, want)
    source = "cache"
    if lr is None:
        lr = make_lr(hr, scale)
        cache.put(sample.hr_path, scale, lr)
        source = "made"
    return Pair(lr, hr, source, time.perf_counter() - start)
