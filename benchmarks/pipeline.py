"""Throughput of `sr-tile upscale` on a folder, one image at a time against pipelined.

    python benchmarks/pipeline.py [FOLDER] [--format png|tiff] [--pipeline 1,2] [--repeat 1]

Runs the CLI under /usr/bin/time -v for each --pipeline value (in turn, repeats interleaved)
and prints the wall time, the images per minute and the peak RSS. Default folder: the val
photos in ../shared/data/val, upscaled x4 with the default model.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(folder: Path, out: Path, pipeline: int, fmt: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one CLI run."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "sr_tile", "upscale", str(folder),
           "-d", str(out), "-f", fmt, "--pipeline", str(pipeline)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    h, m, s = (float(g or 0) for g in wall.groups())
    return 3600 * h + 60 * m + s, int(rss.group(1)) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/val")
    parser.add_argument("--format", default="png")
    parser.add_argument("--pipeline", default="1,2")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    depths = [int(x) for x in args.pipeline.split(",")]
    n = len([p for p in args.folder.iterdir() if p.is_file()])
    runs: dict[int, list[tuple[float, float]]] = {d: [] for d in depths}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeat):
            for d in depths:
                runs[d].append(run(args.folder, Path(tmp) / "out", d, args.format))
    base = statistics.median(w for w, _ in runs[depths[0]])
    print(f"{n} images from {args.folder} -> {args.format}, x4, default model")
    for d in depths:
        wall = statistics.median(w for w, _ in runs[d])
        rss = max(r for _, r in runs[d])
        print(f"--pipeline {d}: {wall:7.1f} s wall ({60 * n / wall:5.1f} images/min, "
              f"{base / wall:.2f}x of --pipeline {depths[0]}), peak RSS {rss:6.0f} MiB")


if __name__ == "__main__":
    main()
