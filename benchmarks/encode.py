"""PNG and TIFF encode time and size by zlib level, on one thread and on all cores.

    python benchmarks/encode.py [IMAGE ...] [--crop WxH] [--upscale F]
                                [--levels 1-9] [--workers N] [--repeat 3] [--formats png,tiff]

With no IMAGE: a 1280x960 centre crop of ../shared/data/val/Kite.jpg upscaled
x4 by PIL (bicubic), 5120x3840 (19.7 MP), as sr-tile's outputs look; without
the shared data, scikit-image's astronaut x8 (4096x4096). Each image is
encoded in memory (no disk) in bands of 64 rows, as the upscaler feeds the
writers, with 1 worker and with N (default: all cores), runs interleaved;
times are medians of --repeat runs. Columns: size in MB and % of the raw
pixels, CPU seconds of the 1-worker run (what a level costs, whatever else
runs on the machine), wall time with 1 and N workers and their ratio,
"cores": CPU seconds per wall second of the N-worker run (how many cores it
really kept busy), and "main %": the share of its CPU time spent in the
calling thread, i.e. the serial part (with s that share, N free cores give
at most 1 / (s + (1 - s) / N)). The last two still tell the truth where
other jobs share the cores and wall times lie. With several images a last
table sums them. No assertions; just numbers.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTO = ROOT.parent / "shared" / "data" / "val" / "Kite.jpg"
BAND = 64


def load(path: Path | None, crop: tuple[int, int] | None, upscale: float) -> tuple[str, np.ndarray]:
    from PIL import Image

    if path is None:
        if DEFAULT_PHOTO.is_file():
            return load(DEFAULT_PHOTO, crop or (1280, 960), upscale if upscale != 1 else 4)
        from skimage import data

        im = Image.fromarray(data.astronaut())
        upscale = upscale if upscale != 1 else 8
        name = "astronaut"
    else:
        im = Image.open(path)
        im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        name = path.name
    if crop is not None:
        w, h = min(crop[0], im.width), min(crop[1], im.height)
        x, y = (im.width - w) // 2, (im.height - h) // 2
        im = im.crop((x, y, x + w, y + h))
        name += f" crop {w}x{h}"
    if upscale != 1:
        im = im.resize((round(im.width * upscale), round(im.height * upscale)), Image.BICUBIC)
        name += f" x{upscale:g} bicubic"
    return name, np.asarray(im)


def encoder(fmt: str, pixels: np.ndarray, level: int, workers: int) -> Callable[[], int]:
    """A function that encodes ``pixels`` once and returns the encoded size."""
    from sr_tile.io.meta import ImageMeta
    from sr_tile.io.png_write import write_png
    from sr_tile.io.tiff_write import write_tiff

    h, w, c = pixels.shape
    common = {"width": w, "height": h, "channels": c, "compress_level": level, "workers": workers}

    def run() -> int:
        buf = io.BytesIO()
        bands = (pixels[y : y + BAND] for y in range(0, h, BAND))
        if fmt == "png":
            write_png(buf, bands, bit_depth=8 * pixels.itemsize, meta=ImageMeta("PNG"), **common)
        else:
            write_tiff(buf, bands, dtype=pixels.dtype, meta=ImageMeta("TIFF"), compression="zlib",
                       tile=256, bigtiff=False, icc_profile=None, **common)
        return buf.tell()

    return run


def measure(run: Callable[[], int]) -> tuple[float, float, float, int]:
    """(wall s, CPU s, share of CPU time in this thread, size) of one run."""
    wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
    size = run()
    wall, cpu, main = (time.perf_counter() - wall, time.process_time() - cpu,
                       time.thread_time() - main)
    return wall, cpu, main / cpu if cpu > 0 else 1.0, size


def levels_arg(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--crop", type=lambda s: tuple(int(v) for v in s.split("x")),
                        help="centre crop WxH before upscaling")
    parser.add_argument("--upscale", type=float, default=1.0, help="PIL bicubic factor")
    parser.add_argument("--levels", type=levels_arg, default=list(range(1, 10)))
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--formats", default="png,tiff")
    args = parser.parse_args()

    from sr_tile.io.png_write import resolve_workers

    many = resolve_workers(args.workers)
    counts = [1] if many == 1 else [1, many]
    formats = args.formats.split(",")
    totals: dict[tuple[str, int], list[float]] = {}
    for path in args.images or [None]:
        name, pixels = load(path, args.crop, args.upscale)
        raw = pixels.nbytes
        print(f"\n{name}: {pixels.shape[1]}x{pixels.shape[0]}x{pixels.shape[2]} "
              f"{pixels.dtype}, {raw / 1e6:.1f} MB raw; medians of {args.repeat}; "
              f"workers {' and '.join(map(str, counts))}", flush=True)
        header(many)
        for fmt in formats:
            for level in args.levels:
                runs: dict[int, list[tuple[float, float, float, int]]] = {n: [] for n in counts}
                for _ in range(args.repeat):
                    for n in counts:  # interleaved: background load hits both alike
                        runs[n].append(measure(encoder(fmt, pixels, level, n)))
                one = statistics.median(r[0] for r in runs[1])
                cpu = statistics.median(r[1] for r in runs[1])
                par = statistics.median(r[0] for r in runs[many])
                busy = statistics.median(r[1] / r[0] for r in runs[many])
                share = statistics.median(r[2] for r in runs[many])
                size = runs[1][0][3]
                row(fmt, level, size, raw, cpu, one, par, busy, share, many)
                total = totals.setdefault((fmt, level), [0, 0, 0, 0, 0, 0, 0])
                for i, v in enumerate((size, raw, cpu, one, par, busy, share)):
                    total[i] += v
    if len(args.images) > 1:
        print(f"\nall {len(args.images)} images (cores, main %: means)")
        header(many)
        count = len(args.images)
        for (fmt, level), (size, raw, cpu, one, par, busy, share) in totals.items():
            row(fmt, level, int(size), raw, cpu, one, par, busy / count, share / count, many)
    return 0


def header(many: int) -> None:
    line = f"{'format':6} {'level':>5} {'MB':>8} {'% raw':>6} {'1w CPU':>8} {'1 worker':>9}"
    print(line + (f" {f'{many} workers':>10} {'speedup':>7} {'cores':>5} {'main %':>6}"
                  if many > 1 else ""))


def row(fmt: str, level: int, size: float, raw: float, cpu: float, one: float, par: float,
        busy: float, share: float, many: int) -> None:
    line = f"{fmt:6} {level:5d} {size / 1e6:8.2f} {100 * size / raw:6.1f} {cpu:7.3f}s {one:8.3f}s"
    if many > 1:
        line += f" {par:9.3f}s {one / par:6.2f}x {busy:5.2f} {100 * share:5.0f}%"
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
