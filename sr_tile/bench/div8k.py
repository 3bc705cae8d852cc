"""Build Test2K / Test4K / Test8K from DIV8K by the ClassSR protocol.

The protocol (ClassSR, followed by ARM, ENAF and AdaFormer): DIV8K images 1201-1300 make
Test2K, 1301-1400 Test4K, 1401-1500 Test8K. Test8K HR is the original, Test2K HR is the image
bicubic-downsampled x4, Test4K x2; every HR is mod-cropped to 4 and LR = MATLAB-style antialiased
``imresize(HR, 1/4)``; the sets are written in the ClassSR layout ``HR/X4`` + ``LR/X4``.

Where the protocol says nothing, :data:`ASSUMPTIONS` says what is done here; the CLI prints it
and each set's ``sr-tile-dataset.json`` records it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sr_tile import __version__
from sr_tile.bench.datasets import image_files, make_lr, mod_crop, to_rgb8, write_png_atomic
from sr_tile.errors import ConfigError, SrTileError
from sr_tile.imresize import imresize_np
from sr_tile.io import read_image
from sr_tile.io.atomic import write_json_atomic

__all__ = ["ASSUMPTIONS", "DIV8K_SETS", "PROTOCOL", "PrepareReport", "SetReport",
           "find_div8k_images", "prepare_div8k"]

SCALE = 4
#: set name -> (first, last DIV8K index, HR downsampling factor)
DIV8K_SETS: dict[str, tuple[int, int, int]] = {
    "Test2K": (1201, 1300, 4),
    "Test4K": (1301, 1400, 2),
    "Test8K": (1401, 1500, 1),
}
PROTOCOL = (
    "ClassSR: DIV8K 1201-1300 -> Test2K (HR = original downsampled x4), 1301-1400 -> Test4K "
    "(HR = original downsampled x2), 1401-1500 -> Test8K (HR = original); every HR mod-cropped "
    "to 4; LR = MATLAB antialiased bicubic imresize(HR, 1/4); layout HR/X4 + LR/X4"
)
ASSUMPTIONS: tuple[str, ...] = (
    ("source files are found by name: a stem that is a number (DIV8K's 0001.png-1500.png, "
     "leading zeros optional) gives the image's index; other files are ignored"),
    "outputs keep the source stem (1201.png) in both HR/X4 and LR/X4, so pairs match by name",
    ("Test4K/Test2K HR: the original is first mod-cropped to 2/4 so the downsampled size is "
     "exact, then shrunk by MATLAB-style antialiased bicubic imresize (the same kernel as the "
     "LR), rounded to 8 bit; the papers only say 'bicubic'"),
    ("everything is written as 8-bit RGB PNG: 16-bit sources are scaled x/257 and rounded, gray "
     "is replicated to RGB, alpha is dropped; EXIF orientation is applied"),
    "images already written are kept (the run can be resumed); --overwrite rebuilds them",
)

_INDEX = re.compile(r"0*(\d+)")


@dataclass
class SetReport:
    name: str
    first: int
    last: int
    factor: int
    written: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    missing: int = 0

    @property
    def expected(self) -> int:
        return self.last - self.first + 1


@dataclass
class PrepareReport:
    source: str
    dest: str
    sets: list[SetReport]


def find_div8k_images(src: Path) -> tuple[dict[int, Path], list[str]]:
    """Index -> file for the image files of ``src`` named by number; plus warnings (duplicates)."""
    if not src.is_dir():
        raise ConfigError(f"{src}: not a folder (give the DIV8K HR folder)")
    found: dict[int, Path] = {}
    warnings = []
    for p in image_files(src):
        m = _INDEX.fullmatch(p.stem)
        if m is None:
            continue
        index = int(m.group(1))
        if index in found:
            warnings.append(f"{p.name}: index {index} also given by {found[index].name}; "
                            f"using {found[index].name}")
            continue
        found[index] = p
    return found, warnings


def _manifest(path: Path, report: SetReport, source: Path) -> None:
    data = {
        "dataset": report.name,
        "made_by": f"sr-tile {__version__} data prepare-div8k",
        "source": str(source),
        "protocol": PROTOCOL,
        "assumptions": list(ASSUMPTIONS),
        "div8k_range": [report.first, report.last],
        "hr_downsampling": report.factor,
        "scale": SCALE,
        "images": sorted(report.written + report.kept),
        "failed": report.failed,
    }
    write_json_atomic(path, data)


def prepare_div8k(
    src: str | Path,
    dest: str | Path,
    *,
    sets: tuple[str, ...] = tuple(DIV8K_SETS),
    overwrite: bool = False,
    on_image: Callable[[str, str, int, int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> PrepareReport:
    """Write ``dest/<set>/HR/X4/<stem>.png`` and ``dest/<set>/LR/X4/<stem>.png`` for each set.

    ``on_image(set, file name, i, n)`` is called before each image. A file that cannot be read is
    reported (``on_warning``) and skipped. ConfigError when none of 1201-1500 is in ``src``.
    """
    src, dest = Path(src).expanduser(), Path(dest).expanduser()
    unknown = [s for s in sets if s not in DIV8K_SETS]
    if unknown:
        raise ConfigError(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(DIV8K_SETS)}")
    found, warnings = find_div8k_images(src)
    for w in warnings:
        if on_warning is not None:
            on_warning(w)
    wanted = {name: DIV8K_SETS[name] for name in DIV8K_SETS if name in sets}
    if not any(first <= i <= last for first, last, _ in wanted.values() for i in found):
        ranges = ", ".join(f"{n} {a}-{b}" for n, (a, b, _) in wanted.items())
        raise ConfigError(
            f"{src}: none of the DIV8K images needed ({ranges}) is there "
            f"(expected files named like 1201.png; found {len(found)} numbered images)"
        )
    reports = []
    for name, (first, last, factor) in wanted.items():
        report = SetReport(name, first, last, factor)
        indices = [i for i in range(first, last + 1) if i in found]
        report.missing = report.expected - len(indices)
        hr_dir, lr_dir = dest / name / "HR" / f"X{SCALE}", dest / name / "LR" / f"X{SCALE}"
        if indices:
            hr_dir.mkdir(parents=True, exist_ok=True)
            lr_dir.mkdir(parents=True, exist_ok=True)
        for k, index in enumerate(indices, 1):
            path = found[index]
            out_name = f"{path.stem}.png"
            if on_image is not None:
                on_image(name, path.name, k, len(indices))
            hr_path, lr_path = hr_dir / out_name, lr_dir / out_name
            if not overwrite and hr_path.is_file() and lr_path.is_file():
                report.kept.append(out_name)
                continue
            try:
                original = to_rgb8(read_image(path, max_pixels=None).pixels)
            except SrTileError as exc:
                report.failed[path.name] = str(exc)
                if on_warning is not None:
                    on_warning(str(exc))
                continue
            if factor > 1:
                hr = imresize_np(mod_crop(original, factor), 1.0 / factor)
            else:
                hr = original
            del original
            hr = mod_crop(hr, SCALE)
            if hr.shape[0] < SCALE or hr.shape[1] < SCALE:
                report.failed[path.name] = f"{path}: too small for x{factor * SCALE}"
                continue
            lr = make_lr(hr, SCALE)
            write_png_atomic(hr_path, hr)
            write_png_atomic(lr_path, lr)
            report.written.append(out_name)
        if indices:
            _manifest(dest / name / "sr-tile-dataset.json", report, src)
        reports.append(report)
    return PrepareReport(str(src), str(dest), reports)


def report_dict(report: PrepareReport) -> dict:
    return asdict(report)
