"""How far tiled output is from whole-image output, per tile size and overlap.

    python benchmarks/tiling.py [FOLDER] -m MODEL [--weights FILE] [--scale 4]
                                [--tiles 64,96,128] [--overlaps 8,16] [--static]

For each image of an HR folder (default: ../shared/data/val) the LR is made as bench makes it,
upscaled once as a single tile (the whole image) and once per (tile, overlap); the script
prints, per setting, the mean PSNR-Y against HR of the tiled run minus that of the whole run,
the largest per-image |difference| of that PSNR, the max abs pixel difference (8-bit) between
the two outputs, and the model time. A model whose tiles see only themselves (AdaFormer's
global branch, any net's receptive field past the overlap) is not exact when tiled; this says
by how much, so that its default tile and overlap can be chosen.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from sr_tile.bench.datasets import LRCache, load_pair, scan_folder
from sr_tile.metrics import psnr_y
from sr_tile.upscale import UpscaleOptions, Upscaler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/val")
    parser.add_argument("-m", "--model", required=True)
    parser.add_argument("--weights")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--tiles", default="64,96,128")
    parser.add_argument("--overlaps", default="8,16")
    parser.add_argument("--static", action="store_true", help="routed models: run dense")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()

    data = scan_folder(args.folder, scale=args.scale)
    samples = data.samples[: args.limit]
    settings = [(t, o) for t in map(int, args.tiles.split(","))
                for o in map(int, args.overlaps.split(",")) if o < t]

    def upscaler(tile: int | None, overlap: int | None) -> Upscaler:
        return Upscaler(UpscaleOptions(scale=args.scale, model=args.model, weights=args.weights,
                                       tile=tile, overlap=overlap, static=args.static,
                                       max_pixels=None, batch_size=1))

    rows: dict[tuple[int, int], list[tuple[float, int, float]]] = {s: [] for s in settings}
    for sample in samples:
        pair = load_pair(sample, args.scale, LRCache(None))
        h, w = pair.lr.shape[:2]
        whole_up = upscaler(-(-max(h, w) // 8) * 8, None)  # one tile; the model's overlap
        whole = whole_up.upscale_whole(pair.lr)
        base = psnr_y(whole, pair.hr, args.scale)
        line = [f"{sample.name} {w}x{h}: whole {base:.3f} dB ({whole_up.runner.seconds:.1f} s)"]
        for tile, overlap in settings:
            up = upscaler(tile, overlap)
            out = up.upscale_whole(pair.lr)
            diff = psnr_y(out, pair.hr, args.scale) - base
            err = int(np.abs(out.astype(int) - whole.astype(int)).max())
            rows[(tile, overlap)].append((diff, err, up.runner.seconds))
            line.append(f"{tile}/{overlap} {diff:+.4f} dB max|d| {err}")
        print("  ".join(line), flush=True)
    print(f"\n{args.model} x{args.scale}{' (static)' if args.static else ''}, "
          f"{len(samples)} images: tiled minus whole")
    print("tile/overlap  mean dPSNR-Y  max |dPSNR-Y|  max |pixel diff|  model time")
    for (tile, overlap), values in rows.items():
        diffs = [d for d, _, _ in values]
        print(f"{tile:>4}/{overlap:<7} {statistics.fmean(diffs):+12.4f} "
              f"{max(abs(d) for d in diffs):14.4f} {max(e for _, e, _ in values):17d} "
              f"{sum(s for _, _, s in values):10.1f} s")


if __name__ == "__main__":
    main()
