"""PSNR-Y vs FLOPs, like ENAF Fig. 5: a curve per dynamic model over its eta sweep, its static
backbone as a point, bicubic as a dashed line (and a point at its own FLOPs).

matplotlib is an optional extra (``pip install 'sr-tile[plot]'``); it is imported only here, and
only when a plot is asked for.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from sr_tile.errors import ConfigError
from sr_tile.io.atomic import write_bytes_atomic

__all__ = ["plot_flops_by_scale", "plot_psnr_flops"]

_INSTALL_HINT = "--plot needs matplotlib: pip install 'sr-tile[plot]' (or: pip install matplotlib)"


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(_INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    """Fail early (before a long run) when matplotlib is missing."""
    _pyplot()


def _mean(row: dict[str, Any]) -> tuple[float | None, float | None]:
    m = row["mean"]
    if m.get("psnr_y") is None or m.get("flops") is None:
        return None, None
    return m["flops"] / 1e9, m["psnr_y"]


def _curve(rows: list[dict[str, Any]], model: str) -> list[tuple[float, float, dict]]:
    """The eta-driven routed rows of ``model`` (sweep + routed, not budget), by FLOPs."""
    points = []
    for r in rows:
        if r["model"] == model and r["kind"] in ("sweep", "routed") and r.get("budget") is None:
            x, y = _mean(r)
            if x is not None and y is not None:
                points.append((x, y, r))
    return sorted(points, key=lambda p: (p[0], p[1]))


def plot_psnr_flops(report: dict[str, Any], path: str | Path) -> Path:
    """Draw the bench report (the JSON dict of :func:`sr_tile.bench.report.to_dict`) to ``path``.

    One colour per model: its eta sweep as a line (the two ends labelled with their eta), its
    routed row as a star labelled with the preset and FLOPs %, its static backbone as a square.
    Bicubic is a dashed line. x is log when the FLOPs span more than 20x.
    """
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    rows = report["models"]
    fig, ax = plt.subplots(figsize=(8.0, 5.5), dpi=120)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs: list[float] = []
    handles: list[Any] = []
    note = {"fontsize": 7, "textcoords": "offset points"}

    models = list(dict.fromkeys(r["model"] for r in rows if r["kind"] != "bicubic"))
    for i, model in enumerate(models):
        color = colors[i % len(colors)]
        handles.append(Line2D([], [], color=color, marker="o", markersize=4, label=model))
        curve = _curve(rows, model)
        if curve:
            ax.plot([p[0] for p in curve], [p[1] for p in curve], "-o", color=color,
                    markersize=4, linewidth=1.5, zorder=2)
            sweep = [p for p in curve if p[2].get("eta") is not None]
            ends = {}
            if sweep:  # cheapest end: its largest eta; dearest end: its smallest eta
                low = min(sweep, key=lambda p: (p[0], -p[2]["eta"]))
                high = max(sweep, key=lambda p: (p[0], -p[2]["eta"]))
                ends = {id(low[2]): low, id(high[2]): high}
            for x, y, r in ends.values():
                ax.annotate(f"η={r['eta']:g}", (x, y), xytext=(4, -11), color=color, **note)
            xs += [p[0] for p in curve]
        for r in rows:
            if r["model"] != model or r["kind"] not in ("routed", "static"):
                continue
            x, y = _mean(r)
            if x is None:
                continue
            xs.append(x)
            if r["kind"] == "routed":
                ax.plot([x], [y], marker="*", markersize=14, color=color, linestyle="none",
                        markeredgecolor="black", markeredgewidth=0.6, zorder=4)
                how = r["label"][len(model):].strip() or "routed"
                pct = r["mean"].get("flops_pct")
                text = f"{how}: {pct:.0f}%" if pct is not None else how
                ax.annotate(text, (x, y), xytext=(-6, 7), ha="right", color=color,
                            fontweight="bold", **note)
            else:
                ax.plot([x], [y], marker="s", markersize=8, color=color, linestyle="none",
                        markeredgecolor="black", markeredgewidth=0.6, zorder=3)

    bicubic = next((r for r in rows if r["kind"] == "bicubic"), None)
    if bicubic is not None:
        x, y = _mean(bicubic)
        if x is not None:
            # A line, not a point: interpolation costs ~0.1% of a network, and a point that far
            # left would squeeze every curve into a corner of a log axis.
            ax.axhline(y, color="0.45", linestyle="--", linewidth=1, zorder=1)
            handles.append(Line2D([], [], color="0.45", linestyle="--",
                                  label=f"bicubic ({y:.2f} dB, {x:.2g} G FLOPs)"))
            if not xs:  # bicubic alone: show it where it is
                ax.plot([x], [y], marker="D", markersize=6, color="0.35", linestyle="none")
                xs.append(x)
    if any(r["kind"] == "static" for r in rows):
        handles.append(Line2D([], [], marker="s", color="0.6", markeredgecolor="black",
                              linestyle="none", label="static backbone (100% FLOPs)"))
    if any(r["kind"] == "routed" for r in rows):
        handles.append(Line2D([], [], marker="*", markersize=11, color="0.6",
                              markeredgecolor="black", linestyle="none",
                              label="routed row (preset, eta or budget): % of static FLOPs"))
    if any(r["kind"] == "sweep" for r in rows):
        handles.append(Line2D([], [], marker="o", markersize=4, color="0.6",
                              label="eta sweep (η: cost weight)"))

    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif positive:
        ax.set_xlim(left=0, right=max(positive) * 1.08)  # savings read from zero
    convention = report.get("flops_convention", "classsr")
    ax.set_xlabel(f"mean FLOPs per image (G, {convention} convention, estimator included)")
    ax.set_ylabel(f"mean PSNR-Y (dB), x{report['scale']}, border {report['scale']} px")
    n = report.get("n_images")
    ax.set_title(f"{report['dataset']}: PSNR-Y vs FLOPs (x{report['scale']}"
                 + (f", {n} images)" if n else ")"))
    ax.grid(True, which="both", alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9)
    fig.tight_layout()
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    suffix = path.suffix.lower().lstrip(".") or "png"
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=suffix if suffix in ("png", "pdf", "svg") else "png")
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return path


def plot_flops_by_scale(report: dict[str, Any], path: str | Path) -> Path:
    """TADT's Fig. 2: extractor FLOPs per LR pixel against the scale, one thin line per image
    and the mean in bold, with the all-branches extractor as a flat line (what a static
    transformer such as SwinIR spends at every scale). ``report``: the JSON dict of
    ``benchmarks/tadt_scales.py``."""
    plt = _pyplot()
    path = Path(path)
    scales = report["scales"]
    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=120)
    for image in report["images"]:
        ax.plot(scales, [r["extractor_flops_px"] / 1e3 for r in image["by_scale"]], "-",
                color="0.75", linewidth=0.8)
    mean = [m["extractor_flops_px"] / 1e3 for m in report["mean"]]
    ax.plot(scales, mean, "-o", color="tab:blue", linewidth=2, label=f"{report['model']} (TARC)")
    for s, m, y in zip(scales, report["mean"], mean):
        ax.annotate(f"{m['branches_on']:g}/{report['branches']}", (s, y),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    full = report["extractor_flops_px_all"] / 1e3
    ax.axhline(full, color="tab:red", linestyle="--", label="every branch on (static)")
    ax.set_ylim(bottom=0, top=full * 1.12)
    ax.set_xlabel("scale")
    ax.set_ylabel("extractor kFLOPs per LR pixel (classsr)")
    ax.set_title(f"{report['dataset']}: extractor FLOPs by scale "
                 f"({len(report['images'])} images; labels: branches on, mean)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(plt, fig, path)
