"""Upscale a >= 5K image x4 into a tiled BigTIFF and print peak RSS and throughput.

    python benchmarks/stream_bigtiff.py [INPUT] [--model bicubic] [--tile 256] [--repeat 1]

INPUT defaults to a 5120x2880 image from ../shared/data when present, else a
5120x2880 test image is composed from scikit-image's photos. The point is the
memory bound: the output (20480x11520x3, 708 MB at 8 bits, 2.8 GB as float32)
never exists whole in memory; the tiler streams bands into the TIFF writer.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CANDIDATES = [
    ROOT.parent / "shared" / "data" / "val" / "Volna.jpg",
    ROOT.parent / "shared" / "data" / "train" / "Altai.png",
]


def make_input(folder: Path) -> Path:
    """A 5120x2880 RGB PNG tiled from real photos (no shared data needed)."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee()]
    canvas = np.zeros((2880, 5120, 3), np.uint8)
    k = 0
    for y in range(0, 2880, 400):
        for x in range(0, 5120, 400):
            p = photos[k % 3][:400, :400]
            canvas[y : y + 400, x : x + 400] = p[: 2880 - y, : 5120 - x]
            k += 1
    path = folder / "composite_5120x2880.png"
    Image.fromarray(canvas).save(path)
    return path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", type=Path)
    parser.add_argument("--model", default="bicubic")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tile", type=int, default=None)
    parser.add_argument("--compression", default="none", help="TIFF compression: none or zlib")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    import tifffile

    from sr_tile import UpscaleOptions, Upscaler, tune_allocator
    from sr_tile.io import WriteOptions

    tune_allocator()  # as the CLI does

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = args.input or next((p for p in CANDIDATES if p.is_file()), None) or make_input(tmp)
        rss_before = peak_rss_mib()
        upscaler = Upscaler(
            UpscaleOptions(
                scale=args.scale,
                model=args.model,
                tile=args.tile,
                overwrite=True,
                write=WriteOptions(bigtiff=True, tiff_compression=args.compression),
            )
        )
        dst = tmp / "out.tif"
        totals, latencies = [], []
        for _ in range(args.repeat):
            start = time.perf_counter()
            report = upscaler.upscale_file(src, dst)
            totals.append(time.perf_counter() - start)
            latencies.append(report.latency_s)
        with tifffile.TiffFile(dst) as tif:
            page = tif.pages[0]
            shape, tiled, big = page.shape, page.is_tiled, tif.is_bigtiff
        size_mb = dst.stat().st_size / 1e6
        out_mpix = report.out_width * report.out_height / 1e6
        total = statistics.median(totals)
        print(f"input           {src} ({report.width}x{report.height})")
        print(f"output          {shape} tiled={tiled} bigtiff={big} {size_mb:.0f} MB on disk")
        print(f"model           {report.model} x{report.scale}, tile {upscaler.tiling.tile}, "
              f"overlap {upscaler.tiling.overlap}, {report.tiles} tiles")
        print(f"total (median)  {total:.2f} s over {args.repeat} run(s); "
              f"compute {statistics.median(latencies):.2f} s")
        print(f"throughput      {out_mpix / total:.1f} output Mpx/s, "
              f"{report.width * report.height / 1e6 / total:.2f} input Mpx/s")
        print(f"FLOPs           {report.flops:.3e} ({report.flops_convention})")
        print(f"peak RSS        {peak_rss_mib():.0f} MiB (after imports: {rss_before:.0f} MiB)")
        return 0 if peak_rss_mib() < 2048 else 1


if __name__ == "__main__":
    sys.exit(main())
