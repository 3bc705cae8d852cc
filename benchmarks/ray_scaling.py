"""Throughput of a folder, and of one huge image, locally and on 1..N local Ray workers.

    python benchmarks/ray_scaling.py [FOLDER] [-m MODEL] [--scale 4] [--workers 1,2]
                                     [--huge 3000x2000] [--limit 4] [--repeat 3]

One local Ray cluster is started once, with every setting's workers (one torch thread each,
model loaded); settings are timed in turn, repeats interleaved after one warm-up round,
medians printed. The local run uses all CPUs as torch threads in
this process. Folder: the LR images of FOLDER's photos (made as bench makes them; default
../shared/data/val). Huge: one photo resized to WxH, cut into bands of tile rows across the
workers (split threshold 1 px). Printed per setting: seconds, LR megapixels per second, the
speed-up over one worker, and the driver's peak RSS (VmHWM, reset before each run): the
driver only blends on Ray, so its memory is the image, one band per worker and the writer.
Outputs are TIFF; ``--compare`` prints each Ray setting's largest pixel difference from the
local output (``--cases huge --huge 12000x8000 --compare``: the issue's acceptance run).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sr_tile.batch import run_jobs
from sr_tile.bench.datasets import LRCache, load_pair, scan_folder
from sr_tile.cluster import Cluster, ClusterOptions
from sr_tile.io import read_image
from sr_tile.paths import plan_run
from sr_tile.upscale import UpscaleOptions, Upscaler


def peak_rss_mib() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM starts again from VmRSS


def timed(run, jobs) -> tuple[float, float]:
    """(seconds, driver peak RSS MiB) of one run of every job."""
    reset_peak_rss()
    start = time.perf_counter()
    reports = list(run(jobs))
    seconds = time.perf_counter() - start
    bad = [r for r in reports if r.status != "ok"]
    if bad:
        raise SystemExit(f"{bad[0].input}: {bad[0].error}")
    return seconds, peak_rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/val")
    parser.add_argument("-m", "--model", default="enaf-fsrcnn")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--huge", default="3000x2000", help="WxH of the one huge LR image")
    parser.add_argument("--limit", type=int, default=4, help="folder images")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cases", default="folder,huge")
    parser.add_argument("--no-warmup", action="store_true", help="time the first round too")
    parser.add_argument("--compare", action="store_true",
                        help="print each setting's largest difference from the local output")
    args = parser.parse_args()
    import ray
    import torch

    cpus = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    folder, out = tmp / "lr", tmp / "out"
    folder.mkdir()
    samples = scan_folder(args.folder, scale=args.scale).samples[: args.limit]
    lrs = [load_pair(s, args.scale, LRCache(None)).lr for s in samples]
    for sample, lr in zip(samples, lrs):
        Image.fromarray(lr).save(folder / f"{sample.name}.png")
    width, height = map(int, args.huge.split("x"))
    folder_pixels = sum(lr.shape[0] * lr.shape[1] for lr in lrs)
    cases = {"folder": ([str(folder)], folder_pixels),
             "huge": ([str(tmp / "huge.png")], width * height)}
    cases = {name: cases[name] for name in args.cases.split(",")}
    if "huge" in cases:
        Image.fromarray(lrs[0]).resize((width, height), Image.BICUBIC).save(tmp / "huge.png")

    options = UpscaleOptions(model=args.model, scale=args.scale, overwrite=True,
                             max_pixels=None)
    counts = [int(n) for n in args.workers.split(",")]
    # every setting's workers stay up (idle ones take no CPU time): Ray's CPUs are logical
    ray.init(num_cpus=sum(counts), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    torch.set_num_threads(cpus)
    local = Upscaler(options)
    settings = {f"local ({cpus} threads)": lambda jobs: run_jobs(local, jobs)}
    for n in counts:
        cluster = Cluster(Upscaler(options), ClusterOptions("auto", workers=n, split_pixels=1))
        settings[f"ray {n} worker{'s' * (n > 1)}"] = cluster.run_jobs
    print(f"{args.model} x{args.scale}, {cpus} CPUs; folder: {len(lrs)} LR images "
          f"({folder_pixels / 1e6:.1f} Mpx); huge: {width}x{height} "
          f"(output {width * args.scale}x{height * args.scale}); median of {args.repeat}"
          f"{'' if args.no_warmup else ' after a warm-up round'}")
    for case, (inputs, pixels) in cases.items():
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in settings}
        warmup = 0 if args.no_warmup else 1  # a first round warms up (oneDNN per shape)
        for repeat in range(args.repeat + warmup):
            for k, (name, run) in enumerate(settings.items()):
                plan = plan_run(inputs, scale=args.scale, output_dir=str(out / str(k)),
                                fmt="tiff", overwrite=True)
                result = timed(run, plan.jobs)
                if repeat >= warmup:
                    times[name].append(result)
        first = next(k for k in settings if k.startswith("ray"))
        one = statistics.median(t for t, _ in times[first])
        print(f"\n{case}:")
        for name, runs in times.items():
            seconds = statistics.median(t for t, _ in runs)
            rss = max(r for _, r in runs)
            print(f"  {name:20s} {seconds:7.2f} s  {pixels / 1e6 / seconds:6.2f} Mpx/s  "
                  f"x{one / seconds:4.2f} vs {first}  driver peak RSS {rss:6.0f} MiB")
        if args.compare:
            for k, name in enumerate(list(settings)[1:], 1):
                worst = max(int(np.abs(read_image(a, max_pixels=None).pixels.astype(np.int32)
                                       - read_image(b, max_pixels=None).pixels).max())
                            for a, b in zip(sorted((out / "0").iterdir()),
                                            sorted((out / str(k)).iterdir())))
                print(f"  {name}: largest difference from the local output {worst}/255")
    ray.shutdown()


if __name__ == "__main__":
    main()
