"""Which files a batch reads, and where each result goes."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from sr_tile.errors import ConfigError
from sr_tile.io import output_format_for

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff", ".btf", ".tf8"}
)
SUFFIX_FOR_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Job:
    """One input file and the output it maps to."""

    src: Path
    dst: Path


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(
        p
        for p in pattern
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def collect_inputs(items: list[str], *, recursive: bool = False) -> list[tuple[Path, Path]]:
    """Expand files, folders and (quoted) globs into (file, base folder) pairs.

    The base folder is what an output keeps the relative path from, so that a
    recursive run into ``--output-dir`` mirrors the input tree. A name that does
    not exist is kept as a file: it fails on its own, without stopping the batch.
    """
    found: list[tuple[Path, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in _images_in(path, recursive)]
        elif not path.exists() and glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            found += [(Path(m), Path(m).parent) for m in matches if Path(m).is_file()]
        else:
            found.append((path, path.parent))
    seen: set[Path] = set()
    unique = []
    for src, base in found:
        key = src.resolve() if src.exists() else src
        if key not in seen:
            seen.add(key)
            unique.append((src, base))
    return unique


def plan_jobs(
    items: list[str],
    *,
    scale: int,
    output: str | None = None,
    output_dir: str | None = None,
    fmt: str | None = None,
    recursive: bool = False,
) -> list[Job]:
    """Map inputs to outputs.

    ``-o FILE`` is for a single input; ``--output-dir DIR`` mirrors inputs into
    DIR; otherwise ``NAME_x4.EXT`` is written next to each input. ``fmt`` changes
    the suffix.
    """
    if output and output_dir:
        raise ConfigError("give either -o/--output or --output-dir, not both")
    inputs = collect_inputs(items, recursive=recursive)
    if not inputs:
        raise ConfigError("no input images found (looked for " + ", ".join(items) + ")")
    if output:
        if len(inputs) > 1:
            raise ConfigError(f"-o names one file but there are {len(inputs)} inputs; use --output-dir")
        return [Job(inputs[0][0], Path(output))]
    suffix = SUFFIX_FOR_FORMAT[output_format_for(Path("out"), fmt, None)] if fmt else None
    jobs = []
    for src, base in inputs:
        ext = suffix or (src.suffix if src.suffix.lower() in IMAGE_SUFFIXES else ".png")
        if output_dir:
            rel = src.relative_to(base) if src.is_relative_to(base) else Path(src.name)
            dst = Path(output_dir) / rel.with_suffix(ext)
        else:
            dst = src.with_name(f"{src.stem}_x{scale}{ext}")
        jobs.append(Job(src, dst))
    return jobs
