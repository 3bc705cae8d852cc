"""TADT's Fig. 2: which branches TARC turns on, and the extractor FLOPs per LR pixel that
follow, per image and scale, against the extractor with every branch on.

    python benchmarks/tadt_scales.py [FOLDER] [-m tadt-light] [--weights FILE]
                                     [--scales 1.5,2,2.5,3,3.5,4,6] [--json F] [--plot F.png]

For each HR image of the folder (default: ../shared/data/val) and each scale, the LR is made
as ``sr-tile bench`` makes it (mod-crop, MATLAB bicubic); TARC reads it as ``sr-tile upscale``
does (the whole LR image, or crops spread over a large one). Only the controller runs, so this is
quick; ``sr-tile bench -m tadt-light -s 2 -s 4`` gives the PSNR of the routed and all-branch
networks. FLOPs: classsr convention (2 per multiply-add), extractor only (the upsampler's cost
per output pixel does not depend on the route); the controller's own FLOPs are printed apart.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sr_tile.bench.datasets import make_lr, mod_crop, scan_folder, to_rgb8
from sr_tile.io import read_image
from sr_tile.models.registry import create_model
from sr_tile.models.tadt.runner import route_view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared/data/val")
    parser.add_argument("-m", "--model", default="tadt-light")
    parser.add_argument("--weights", help="a weights file (default: the shipped one)")
    parser.add_argument("--untrained", action="store_true", help="no weights (checks plumbing)")
    parser.add_argument("--scales", default="1.5,2,2.5,3,3.5,4,6")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    if args.plot:
        from sr_tile.bench.plot import check_available

        check_available()

    scales = [float(s) for s in args.scales.split(",")]
    weights = False if args.untrained else (args.weights or True)
    model = create_model(args.model, scale=scales[0], weights=weights)
    m = model.config.size_multiple
    per_px = lambda route: model.extractor_flops(1, m, m, route) / (m * m)  # noqa: E731
    full = per_px(None)
    images = []
    for sample in scan_folder(args.folder, scale=4).samples:
        hr = to_rgb8(read_image(sample.hr_path).pixels)
        rows = []
        for s in scales:
            lr = make_lr(mod_crop(hr, s), s)
            view = route_view(np.ascontiguousarray(lr))
            with torch.inference_mode():
                route, p = model.route(view, s)
            rows.append({"scale": s, "branches_on": int(route.sum()),
                         "route": "".join("1" if v else "0" for v in route.tolist()),
                         "extractor_flops_px": per_px(route),
                         "tarc_flops": model.tarc.flops(view[:, 0].numel())})
        images.append({"name": sample.name, "by_scale": rows})
        print(f"{sample.name}: " + ", ".join(
            f"x{r['scale']:g} {r['branches_on']}/{model.config.branches}" for r in rows))

    mean = [{"scale": s,
             "branches_on": round(float(np.mean([i["by_scale"][k]["branches_on"]
                                                 for i in images])), 2),
             "extractor_flops_px": float(np.mean([i["by_scale"][k]["extractor_flops_px"]
                                                  for i in images]))}
            for k, s in enumerate(scales)]
    print(f"\n{args.model}: extractor FLOPs per LR pixel (classsr), mean over "
          f"{len(images)} images; every branch on: {full / 1e3:.1f} k")
    print(f"{'scale':>6} {'branches on':>12} {'kFLOPs/px':>10} {'of all':>7}")
    for row in mean:
        print(f"{row['scale']:>6g} {row['branches_on']:>12g} "
              f"{row['extractor_flops_px'] / 1e3:>10.1f} "
              f"{100 * row['extractor_flops_px'] / full:>6.1f}%")
    print(f"TARC: {images[0]['by_scale'][0]['tarc_flops'] / 1e9:.2f} GFLOPs per image "
          "(once, on the LR image or crops of it)")
    report = {"model": args.model,
              "weights": "untrained" if args.untrained else (args.weights or "shipped"),
              "dataset": args.folder.name, "scales": scales,
              "branches": model.config.branches, "extractor_flops_px_all": full,
              "mean": mean, "images": images}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        from sr_tile.bench.plot import plot_flops_by_scale

        print(f"plot: {plot_flops_by_scale(report, args.plot)}")


if __name__ == "__main__":
    main()
