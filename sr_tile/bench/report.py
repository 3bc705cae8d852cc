"""Bench results as a rich table, JSON (stable shape, read by other tools) and CSV.

JSON shape (keys may be added, never renamed or removed)::

    {"dataset", "scale", "flops_convention", ...,
     "models": [{"model", "preset", "mean": {"psnr_y", "ssim_y", "flops", "flops_pct",
                 "latency_s", ...},
                 "images": [{"name", "psnr_y", "ssim_y", "flops", "flops_pct", "latency_s",
                             "exits", ...}], ...}]}

A static row has ``preset`` null and ``flops_pct`` 100. Non-finite numbers (PSNR of an exact
output) are written as null.
"""

from __future__ import annotations

import csv
import io
import math
import platform
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from sr_tile import __version__
from sr_tile.bench.datasets import LR_RECIPE, crop_note
from sr_tile.bench.run import BenchResult, ImageResult, RowResult
from sr_tile.flops import format_flops
from sr_tile.io.atomic import write_bytes_atomic
from sr_tile.runner import FLOPS_CONVENTION

__all__ = ["FLOPS_CONVENTION_NOTE", "image_table", "summary_table", "to_csv", "to_dict",
           "write_csv"]

FLOPS_CONVENTION_NOTE = (
    "classsr: 2 x multiply-adds of conv/linear layers, transposed convs at output resolution "
    "(FSRCNN x4 = 468 M per 32x32 LR patch); routed rows include the PSNR estimator; "
    "path 0 (bicubic) inside a routed model counts 0, the bicubic row counts 2 FLOPs per tap"
)


def _num(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _image_dict(im: ImageResult) -> dict[str, Any]:
    return {
        "name": im.name,
        "status": im.status,
        "error": im.error,
        "psnr_y": _num(im.psnr_y),
        "ssim_y": _num(im.ssim_y),
        "flops": im.flops,
        "flops_static": im.flops_static,
        "flops_pct": _num(im.flops_pct),
        "latency_s": _num(im.latency_s),
        "latency_runs_s": [float(x) for x in im.latency_runs],
        "wall_s": _num(im.wall_s),
        "io_s": _num(im.io_s),
        "width": im.width,
        "height": im.height,
        "tiles": im.tiles,
        "lr_source": im.lr_source,
        **_extras(im.extras),
    }


def _extras(extras: dict[str, Any]) -> dict[str, Any]:
    """A family's fields as JSON: numbers finite or null, the rest as they are."""
    return {k: _num(v) if isinstance(v, float) else v for k, v in extras.items()}


def _deltas(result: BenchResult, row: RowResult, mean: dict) -> dict[str, float | None]:
    """Mean PSNR-Y against the row's own baseline and against bicubic; a routed row's FLOPs
    and compute time as fractions of its static rows' (on the routing tiles, and at their
    best tiling), ratios of totals over the images."""

    def other(label: str | None, key: str) -> float | None:
        row = result.row(label) if label else None
        return None if row is None else row.mean()[key]

    def delta(label: str | None) -> float | None:
        base = other(label, "psnr_y")
        return None if base is None or mean["psnr_y"] is None else mean["psnr_y"] - base

    def ratio(key: str, label: str | None) -> float | None:
        base = other(label, key)
        return None if not base or mean[key] is None else mean[key] / base

    static = row.spec.baseline if row.spec.dynamic and row.spec.route else None
    return {"psnr_y_vs_baseline": delta(row.spec.baseline), "psnr_y_vs_bicubic": delta("bicubic"),
            "flops_vs_best": ratio("flops", row.spec.best),
            "time_vs_static": ratio("latency_s", static),
            "time_vs_best": ratio("latency_s", row.spec.best)}


def _row_dict(result: BenchResult, row: RowResult) -> dict[str, Any]:
    spec = row.spec
    mean = row.mean()
    mean.update(_deltas(result, row, mean))
    mean = {k: (_num(v) if isinstance(v, float) else v) for k, v in mean.items()}
    return {
        "model": spec.model,
        "preset": spec.preset,
        "label": spec.label,
        "kind": spec.kind,
        "routed": spec.route and spec.dynamic,
        "eta": spec.routing.eta if spec.kind == "sweep" else mean.get("eta"),
        "budget": spec.routing.budget if spec.route else None,
        "gamma": spec.routing.gamma if spec.route else None,
        "baseline": spec.baseline,
        "backend": spec.variant.backend,
        "precision": spec.variant.precision,
        "tta": spec.variant.tta,
        "weights": row.weights or ("shipped" if spec.model != "bicubic" else None),
        "repeat": spec.repeat,
        "tile": row.tile,
        "overlap": row.overlap,
        "flops_note": row.flops_note,
        "mean": mean,
        "images": [_image_dict(im) for im in row.images],
    }


def to_dict(result: BenchResult) -> dict[str, Any]:
    import torch

    ds, opts = result.dataset, result.options
    return {
        "dataset": ds.name,
        "scale": opts.scale,
        "flops_convention": FLOPS_CONVENTION,
        "flops_convention_note": FLOPS_CONVENTION_NOTE,
        "latency": (f"median of {opts.repeat} timed runs per image after one warm-up per model "
                    "(sweep rows: 1 run); model compute only; I/O (decode + LR making) is io_s"),
        "metrics": f"PSNR-Y / SSIM-Y (BT.601 Y, BasicSR-compatible), border "
                   f"{math.ceil(opts.scale)} px, SR (uint8) vs 8-bit RGB HR",
        "hr_crop": crop_note(opts.scale),
        "dataset_path": str(ds.root),
        "layout": ds.layout,
        "n_images": max((len(r.images) for r in result.rows), default=0),
        "lr": {"given": ds.given_lr, "recipe": LR_RECIPE, "cache": result.lr_cache},
        "device": opts.device,
        "torch_threads": result.threads or torch.get_num_threads(),
        "platform": platform.platform(),
        "sr_tile_version": __version__,
        "torch_version": torch.__version__,
        "seconds": round(result.seconds, 3),
        "models": [_row_dict(result, row) for row in result.rows],
    }


# ---------------------------------------------------------------------------------------------
# CSV: one line per (row, image), plus a "mean" line per row.

CSV_COLUMNS = (
    "dataset", "scale", "model", "label", "kind", "preset", "image", "status",
    "psnr_y", "ssim_y", "flops", "flops_static", "flops_pct", "latency_s", "wall_s", "io_s",
    "tiles", "flops_vs_best", "time_vs_static", "time_vs_best", "error",
)


def _flat(extras: dict[str, Any]) -> dict[str, Any]:
    """A family's fields as CSV cells: a mapping ``exits`` becomes ``exits_<key>`` columns."""
    cells: dict[str, Any] = {}
    for key, value in extras.items():
        if isinstance(value, dict):
            cells.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            cells[key] = value
    return cells


def to_csv(result: BenchResult) -> str:
    """Fixed columns, then every family field any row has (ENAF: eta, gamma, exits_*)."""
    data = to_dict(result)
    lines = []
    for row in result.rows:
        d = _row_dict(result, row)
        base = {"dataset": data["dataset"], "scale": data["scale"], "model": d["model"],
                "label": d["label"], "kind": d["kind"], "preset": d["preset"]}
        mean_extras = {k: v for k, v in d["mean"].items() if k in _extra_keys(row)}
        for im, values in [*((im, _image_dict(im)) for im in row.images), (None, d["mean"])]:
            lines.append({
                **base, "image": im.name if im else "mean",
                "status": im.status if im else ("ok" if d["mean"]["n_images"] else "failed"),
                **{k: values.get(k) for k in CSV_COLUMNS[8:-1]},
                "error": im.error if im else None,
                **_flat(im.extras if im else mean_extras),
            })
    extra = list(dict.fromkeys(k for line in lines for k in line if k not in CSV_COLUMNS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*CSV_COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(lines)
    return buf.getvalue()


def _extra_keys(row: RowResult) -> set[str]:
    return {k for im in row.images for k in im.extras}


def write_csv(path: str | Path, result: BenchResult) -> None:
    write_bytes_atomic(path, to_csv(result))


# ---------------------------------------------------------------------------------------------
# Console


def _f(x: float | None, fmt: str, suffix: str = "") -> str:
    if x is None or not math.isfinite(x):
        return "-"
    text = f"{x:{fmt}}{suffix}"
    if "+" in fmt and text.startswith("-") and float(text.rstrip(suffix) or 0) == 0:
        text = "+" + text[1:]  # -0.000 reads as a loss; it is none
    return text


def _pct(x: float | None) -> float | None:
    return None if x is None else 100.0 * x


def summary_table(result: BenchResult) -> Table:
    """One line per row, means over the images."""
    opts = result.options
    n = max((len(r.ok_images) for r in result.rows), default=0)
    routed = any(r.spec.route and r.spec.dynamic for r in result.rows)
    sweep = any(r.spec.kind == "sweep" for r in result.rows)
    io_s = result.rows[0].mean()["io_s"] if result.rows else None
    table = Table(
        title=f"sr-tile bench {escape(result.dataset.name)} x{opts.scale}: mean of {n} images",
        caption=(
            f"FLOPs: per image, {FLOPS_CONVENTION} convention (router and estimator included); "
            "%static: of the row's static backbone on the same tiles; %best, t/best: FLOPs and "
            "compute time against the same weights run static at their best tiling. "
            f"Latency: median of {opts.repeat} run{'s' if opts.repeat != 1 else ''}"
            f"{' (sweep rows: 1)' if sweep else ''}, model compute only"
            f"{f', {result.threads} torch thread(s)' if result.threads else ''}; "
            f"I/O apart: {_f(io_s, '.2f', ' s')} per image (decode + LR). "
            "Δ base: PSNR-Y against the row's own baseline (static backbone, or bicubic). "
            f"{crop_note(opts.scale)}; LR by MATLAB-style bicubic."
            + (" routing: the family's own summary (ENAF: % of patches on bicubic/exit 1/"
               "exit 2/full)." if routed else "")
        ),
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,  # no vertical rules, narrow padding: fits 80 columns
        show_edge=False,
        padding=(0, 1, 0, 0),
        pad_edge=False,
    )
    table.add_column("row", min_width=13)  # wraps on narrow terminals; numbers never do
    for name in ("PSNR-Y", "Δ base", "SSIM-Y", "FLOPs", "%static",
                 *(["%best"] if routed else []), "latency",
                 *(["t/best", "routing"] if routed else [])):
        table.add_column(name, justify="right", no_wrap=True)
    for row in result.rows:
        m = _row_dict(result, row)["mean"]
        table.add_row(
            escape(row.spec.label),
            _f(m["psnr_y"], ".3f"),
            _f(m["psnr_y_vs_baseline"], "+.3f"),
            _f(m["ssim_y"], ".4f"),
            format_flops(m["flops"]) if m["flops"] is not None else "-",
            _f(m["flops_pct"], ".1f", "%"),
            *([_f(_pct(m["flops_vs_best"]), ".1f", "%")] if routed else []),
            _f(m["latency_s"], ".3f", " s"),
            *([_f(m["time_vs_best"], ".2f", "x"),
               escape(row.describe({k: m[k] for k in _extra_keys(row) if m.get(k)
                                    is not None}))] if routed else []),
            style="dim" if row.spec.kind == "sweep" else None,
        )
    return table


def image_table(result: BenchResult, *, include_sweep: bool = False) -> Table:
    """PSNR-Y per image and row; routed rows also show their FLOPs % of the static backbone."""
    rows = [r for r in result.rows if include_sweep or r.spec.kind != "sweep"]
    routed = any(r.spec.route and r.spec.dynamic for r in rows)
    table = Table(title="PSNR-Y per image (dB)", title_justify="left",
                  caption="routed rows: (FLOPs % of their static backbone)" if routed else None,
                  caption_justify="left")
    table.add_column("image")
    for row in rows:
        table.add_column(escape(row.spec.label), justify="right")
    names = [im.name for im in rows[0].images] if rows else []
    for i, name in enumerate(names):
        cells = []
        for row in rows:
            im = row.images[i]
            if not im.ok:
                cells.append("[red]failed[/]")
                continue
            text = _f(im.psnr_y, ".2f")
            if row.spec.route and row.spec.dynamic:
                text += f" ({_f(im.flops_pct, '.0f', '%')})"
            cells.append(text)
        table.add_row(escape(name), *cells)
    return table
