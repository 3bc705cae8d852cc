"""Which files a run reads, and every path it will write: decided once, before any work.

:func:`plan_run` expands the inputs (files, folders, quoted globs), maps each to
its output and, for routed models, its route map, and checks every path the run
will write (outputs, route maps, the ``--json`` report) against one set of rules:

- a path that is an input of this run is never written, whatever the flags;
- only regular files are ever replaced (never a device, FIFO, socket or folder);
- an existing file is replaced only with ``--overwrite`` (or skipped with
  ``--skip-existing``);
- two jobs that would write the same file are both refused, each naming the other.

A job that breaks a rule is planned as refused, with its one-line reason, so a
batch runs the rest. Symlinks are resolved: each real file is read once, links
to a file that is already an input are passed over with a note, and links to
folders are followed only with ``follow_links`` (each folder once, so link
loops end).
"""

from __future__ import annotations

import errno
import glob
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sr_tile.errors import ConfigError, ImageWriteError, UsageError
from sr_tile.io.atomic import not_regular
from sr_tile.io.write import FORMAT_FOR_SUFFIX, canonical_format, output_format_for

IMAGE_SUFFIXES = frozenset(  # what a folder scan picks up (GIF is read, not written)
    {".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".tif", ".tiff", ".btf", ".tf8", ".gif"}
)
SUFFIX_FOR_FORMAT = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}


@dataclass(frozen=True)
class Job:
    """One input file, the files it will write, and whether it runs."""

    src: Path
    dst: Path
    route_map: Path | None = None
    refused: str | None = None  # why it will not run (decided before any work), one line
    skip: bool = False  # --skip-existing and the output exists


@dataclass
class RunPlan:
    """Every job of a run, what was passed over, and where the report goes."""

    jobs: list[Job]
    notes: list[str] = field(default_factory=list)  # inputs passed over, one line each
    report: Path | None = None


@dataclass(frozen=True)
class _Input:
    path: Path
    base: Path  # the folder an output keeps its relative path from
    link: bool  # named through a symlink (the file itself lies elsewhere)


def plan_run(
    items: list[str],
    *,
    scale: int | float,
    output: str | None = None,
    output_dir: str | None = None,
    fmt: str | None = None,
    recursive: bool = False,
    follow_links: bool = False,
    report: str | os.PathLike[str] | None = None,
    route_map: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    skip_existing: bool = False,
) -> RunPlan:
    """Plan a run: every input, every path it writes, every refusal (see module doc).

    Raises UsageError for options that can never work, ConfigError when no input is
    found, and ImageWriteError when the report path breaks a rule (nothing can run).
    """
    if output and output_dir:
        raise UsageError("give either -o/--output or --output-dir, not both")
    suffix = SUFFIX_FOR_FORMAT[canonical_format(fmt)] if fmt else None
    if output:
        _check_output_option(output, fmt)
    inputs, notes = collect_inputs(items, recursive=recursive, follow_links=follow_links)
    if not inputs:
        raise ConfigError("no input images found (looked for " + ", ".join(items) + ")")
    if output and len(inputs) > 1:
        raise UsageError(f"-o names one file but there are {len(inputs)} inputs; use --output-dir")
    if route_map is not None and len(inputs) == 1 and Path(route_map).suffix:
        if Path(route_map).suffix.lower() != ".png":
            raise UsageError(f"--route-map {route_map}: route maps are PNG files; name it .png")
    jobs = []
    for item in inputs:
        ext = suffix or _kept_suffix(item.path)
        if output:
            dst = Path(output)
        elif output_dir:
            rel = item.path.relative_to(item.base) if item.path.is_relative_to(item.base) \
                else Path(item.path.name)
            dst = Path(output_dir) / rel.with_suffix(ext)
        else:
            dst = item.path.with_name(f"{item.path.stem}_x{scale:g}{ext}")
        jobs.append(Job(item.path, dst, _route_map_for(route_map, item.path, len(inputs))))
    report_path = Path(report) if report is not None else None
    jobs = _check_writes(jobs, inputs, report_path, overwrite=overwrite,
                         skip_existing=skip_existing)
    return RunPlan(jobs, notes, report_path)


def _kept_suffix(src: Path) -> str:
    """The input's suffix when we write that format, else .png."""
    return src.suffix if src.suffix.lower().lstrip(".") in FORMAT_FOR_SUFFIX else ".png"


def _route_map_for(option: str | os.PathLike[str] | None, src: Path, n_inputs: int) -> Path | None:
    """One input: the file named; several (or a name without suffix): a folder of maps."""
    if option is None:
        return None
    option = Path(option)
    return option if n_inputs == 1 and option.suffix else option / f"{src.stem}_route.png"


def _check_output_option(output: str, fmt: str | None) -> None:
    """``-o`` must name a file, whose suffix (if any) we write in the format asked for."""
    if output.endswith((os.sep, "/")) or _is_dir(Path(output)):
        raise UsageError(f"-o {output}: names a folder; use --output-dir for a folder")
    output_format_for(output, fmt, None)


# --------------------------------------------------------------------------------- inputs


def collect_inputs(
    items: list[str], *, recursive: bool = False, follow_links: bool = False
) -> tuple[list[_Input], list[str]]:
    """Expand files, folders and (quoted) globs; returns the inputs and notes on what was
    passed over. A name that does not exist is kept: it fails on its own, without
    stopping the batch. Each real file is read once, preferably under its own name."""
    found: list[_Input] = []
    notes: list[str] = []
    for item in items:
        path = Path(item)
        if _is_dir(path):
            found += _walk(path, path, recursive, follow_links, {_identity(path)}, notes)
        elif not os.path.lexists(path) and glob.has_magic(item):
            for match in sorted(glob.glob(item, recursive=recursive)):
                if not _is_dir(Path(match)):
                    found.append(_Input(Path(match), Path(match).parent, os.path.islink(match)))
        else:
            found.append(_Input(path, path.parent, os.path.islink(path)))
    return _unique(found, notes), notes


def _walk(folder: Path, base: Path, recursive: bool, follow_links: bool,
          visited: set[tuple[int, int] | None], notes: list[str]) -> list[_Input]:
    """Image files of ``folder`` (and below, with ``recursive``), hidden names skipped."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        notes.append(f"{folder}: folder skipped ({exc.strerror or exc})")
        return []
    found: list[_Input] = []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        link = entry.is_symlink()
        if _is_dir(path):
            if not recursive:
                continue
            if link and not follow_links:
                notes.append(f"{path}: skipped, a link to a folder (pass --follow-links to "
                             "follow it)")
                continue
            key = _identity(path)
            if key in visited:
                notes.append(f"{path}: skipped, a folder already searched (a link loop)")
                continue
            visited.add(key)
            found += _walk(path, base, recursive, follow_links, visited, notes)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            if link and not path.exists():
                notes.append(f"{path}: skipped, a broken link")
                continue
            found.append(_Input(path, base, link))
    return found


def _unique(found: list[_Input], notes: list[str]) -> list[_Input]:
    """Each real file once: files under their own names first, then links to files that
    no other name reaches."""
    seen: dict[tuple[int, int] | Path, Path] = {}
    kept: set[int] = set()
    for only_links in (False, True):
        for i, item in enumerate(found):
            if item.link != only_links:
                continue
            key = _identity(item.path) or item.path
            if key in seen:
                if item.link and seen[key] != item.path:
                    notes.append(f"{item.path}: skipped, a link to {seen[key]}, which is "
                                 "already an input")
                continue
            seen[key] = item.path
            kept.add(i)
    return [item for i, item in enumerate(found) if i in kept]


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` names, following links; None if it cannot be read."""
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_dev, info.st_ino)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name too long, a loop of links: not a folder we can use
        return False


# --------------------------------------------------------------------------------- outputs


def _check_writes(jobs: list[Job], inputs: list[_Input], report: Path | None, *,
                  overwrite: bool, skip_existing: bool) -> list[Job]:
    """Apply the module's rules to every path the jobs and the report will write."""
    input_ids = {key for key in (_identity(i.path) for i in inputs) if key is not None}
    writers: dict[str, list[int]] = {}  # real path -> jobs writing it
    for index, job in enumerate(jobs):
        for target in (job.dst, job.route_map):
            if target is not None:
                writers.setdefault(os.path.realpath(target), []).append(index)
    if report is not None:
        clash = writers.get(os.path.realpath(report))
        problem = _never_written(report, input_ids) or (
            f"{report}: is also the output of {jobs[clash[0]].src}; choose another name for "
            "the report" if clash else None) or _exists(report, overwrite)
        if problem is not None:
            raise ImageWriteError(problem)
    planned = []
    for index, job in enumerate(jobs):
        reason = None
        for target in (job.dst, job.route_map):
            if target is None or reason is not None:
                continue
            others = [jobs[i].src for i in writers[os.path.realpath(target)] if i != index]
            reason = _never_written(target, input_ids) or (
                f"{target}: would be written by this input and by "
                f"{', '.join(map(str, others))}; give them different names or folders"
                if others else None) or _exists(
                    target, overwrite or (skip_existing and target == job.dst))
        skip = reason is None and skip_existing and os.path.lexists(job.dst)
        planned.append(replace(job, refused=reason, skip=skip))
    return planned


def _never_written(path: Path, input_ids: set[tuple[int, int]]) -> str | None:
    """Why ``path`` can never be written by this run, whatever the flags, or None."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None  # nothing there, or a dangling link (replacing the link is fine)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return f"{path}: a part of this path is a file, not a folder"
        return f"{path}: cannot use this path ({exc.strerror or exc})"
    if (info.st_dev, info.st_ino) in input_ids:
        return f"{path}: is an input of this run and is never replaced; choose another name"
    return not_regular(str(path), info.st_mode)


def _exists(path: Path, overwrite: bool) -> str | None:
    if not overwrite and os.path.lexists(path):
        return f"{path}: file exists; pass --overwrite to replace it"
    return None
