"""Scale out on Ray: a folder of images, or the tiles of one huge image, across workers.

``sr-tile upscale INPUT... --ray ADDRESS|auto|local:N``. Every worker is a Ray actor that
holds one loaded model (an :class:`Upscaler` built from the run's options) and uses
``torch.set_num_threads(threads)``, so a worker is ``threads`` CPUs (and
``gpus_per_worker`` GPUs) of the cluster.

Folder mode. Each job goes to a free worker (``ray.util.ActorPool``), which runs it with the
local run's per-file policy (:func:`sr_tile.batch.run_job`): it reads its input from, and
writes its output to, the shared filesystem path, atomically; only the report row and the
job's warning lines come back. Reports arrive in job order, so ``--json``, the summary and
the exit code are the local run's.

One huge image (a single input over ``split_pixels``). The driver decodes it once, runs
the model's ``prepare`` (ENAF's estimator, TADT's controller) and puts the image and that
decision in the object store once (``ray.put``). Workers run bands of tile rows
(:func:`sr_tile.tiler.band_sums`) and return their weighted, unnormalised sums and their
books; the driver adds them in order (:class:`sr_tile.tiler.Blender`) and streams finished
rows to the writer, with at most one band per worker in flight. Tiles route as locally and
the books add up to the local run's FLOPs and exit shares.

Faults. A worker that dies is restarted and its task retried (``max_restarts``,
``max_task_retries``); its temp file is removed by the next write of the same output
(``sr_tile.io.atomic``), so nothing partial stays. An unreachable address is one line.

Ray is the ``sr-tile[ray]`` extra; the local path never imports this module.
"""

from __future__ import annotations

import re
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from sr_tile.batch import ErrorFn, StartFn, run_job
from sr_tile.errors import SrTileError, UsageError
from sr_tile.io import probe_size
from sr_tile.paths import Job
from sr_tile.tiler import Blender, TileConfig, band_sums
from sr_tile.upscale import ImageReport, UpscaleOptions, Upscaler

#: A single input with more LR pixels than this is cut into bands across the workers.
SPLIT_PIXELS = 16 << 20
#: Output bytes (float32 sums) of one band: a band is as many tile rows as fit.
BAND_BYTES = 64 << 20
RETRIES = 2  # restarts of a dead worker, and retries of the task it was running


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a run goes (the CLI's ``--ray*`` flags)."""

    address: str  # "auto", "HOST:PORT", "ray://HOST:PORT", or "local:N" (start N CPUs here)
    workers: int | None = None  # None: the cluster's CPUs (or GPUs) / what one worker takes
    threads: int = 1  # torch threads (and Ray CPUs) per worker
    gpus_per_worker: float = 0.0
    split_pixels: int = SPLIT_PIXELS

    def __post_init__(self) -> None:
        if self.threads < 1 or (self.workers is not None and self.workers < 1):
            raise UsageError("--ray-workers and --threads must be at least 1")
        if self.gpus_per_worker < 0:
            raise UsageError(f"--ray-gpus-per-worker must be >= 0, not {self.gpus_per_worker}")
        if self.split_pixels < 1:
            raise UsageError(f"--ray-split-pixels must be positive, not {self.split_pixels}")


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install 'sr-tile[ray]'") from None
    return ray


def connect(address: str) -> Any:
    """Ray, connected to ``address`` (an existing connection of this process is kept);
    one line (exit 1) when the cluster cannot be reached."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    local = re.fullmatch(r"local:(\d+)", address)
    host = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if local is None and host is not None:  # ray.init retries a dead address for minutes
        try:
            socket.create_connection((host[1], int(host[2])), timeout=5).close()
        except OSError as exc:
            raise SrTileError(f"--ray {address}: cannot reach a Ray cluster there "
                             f"({exc.strerror or exc})") from None
    try:
        if local is not None:
            if int(local[1]) < 1:
                raise UsageError("--ray local:N needs N >= 1")
            ray.init(num_cpus=int(local[1]), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SrTileError(f"--ray {address}: {line}") from None
    return ray


class Worker:
    """A Ray actor: one loaded model, the local per-file policy, bands of one image."""

    def __init__(self, options: UpscaleOptions, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        # bands read the image straight from the object store (read-only) and never write it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        self.upscaler = Upscaler(options)

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, job: Job, index: int) -> tuple[ImageReport | None, list[tuple[str, str]]]:
        """``job`` as the local run does it: (its report, its warning and error lines);
        (None, [("usage", line)]) for a bad option, which stops the run."""
        said: list[tuple[str, str]] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                report = run_job(self.upscaler, job, index,
                                 on_warning=lambda line: said.append(("warning", line)),
                                 on_error=lambda line, exc: said.append(("error", line)))
            except UsageError as exc:
                return None, [("usage", str(exc))]
        return report, [("warning", str(w.message)) for w in caught] + said

    def band(self, image: np.ndarray, handoff: dict[str, Any], rows: range
             ) -> tuple[int, np.ndarray, dict[str, Any]]:
        """Tile rows ``rows`` of ``image``, as prepared by the driver's runner: (first output
        row, weighted sums, books)."""
        runner = self.upscaler.runner
        runner.adopt(handoff)
        top, sums = band_sums(image, runner, scale=runner.scale, config=self.upscaler.tiling,
                              rows=rows)
        return top, sums, runner.books()


class Cluster:
    """Workers on a Ray cluster, each with the run's model loaded.

    ``upscaler``: the driver's own (it checks the options before any worker starts, and
    prepares and blends a huge image)."""

    def __init__(self, upscaler: Upscaler, options: ClusterOptions) -> None:
        ray = connect(options.address)
        self.ray, self.upscaler, self.options = ray, upscaler, options
        resources = ray.cluster_resources()
        if options.gpus_per_worker > resources.get("GPU", 0):
            raise UsageError(f"--ray-gpus-per-worker {options.gpus_per_worker:g}: the cluster "
                             f"has {resources.get('GPU', 0):g} GPUs")
        count = options.workers
        if count is None:
            count = int(resources.get("CPU", 1) // options.threads)
            if options.gpus_per_worker:
                count = min(count, int(resources["GPU"] // options.gpus_per_worker))
        actor = ray.remote(num_cpus=options.threads, num_gpus=options.gpus_per_worker,
                           max_restarts=RETRIES, max_task_retries=RETRIES)(Worker)
        self.workers = [actor.remote(upscaler.options, options.threads)
                        for _ in range(max(1, count))]
        ray.get([w.pid.remote() for w in self.workers])  # loaded (or failed) before any job

    def pool(self) -> Any:
        from ray.util import ActorPool

        return ActorPool(self.workers)

    def run_jobs(self, jobs: list[Job], *, on_start: StartFn | None = None,
                 on_tiles: Callable[[int], None] | None = None,
                 on_warning: Callable[[str], None] | None = None,
                 on_error: ErrorFn | None = None) -> Iterator[ImageReport]:
        """The report of every job, in job order, as :func:`sr_tile.batch.run_jobs` gives
        them: a single input over ``split_pixels`` is cut into bands across the workers,
        other jobs go one per worker."""
        hooks = {"on_start": on_start, "on_tiles": on_tiles, "on_warning": on_warning,
                 "on_error": on_error}
        if len(jobs) == 1 and self._huge(jobs[0]):
            local, self.upscaler.tiler = self.upscaler.tiler, self.bands
            try:
                yield run_job(self.upscaler, jobs[0], **hooks)
            finally:
                self.upscaler.tiler = local
            return
        pool = self.pool()
        for index, job in enumerate(jobs, 1):
            pool.submit(lambda worker, args: worker.run.remote(*args), (job, index))
        for index, job in enumerate(jobs, 1):
            try:
                report, said = pool.get_next()
            except self.ray.exceptions.RayError as exc:
                report, said = None, [("error", f"{job.src}: the Ray worker failed "
                                                f"{RETRIES + 1} times: {_first_line(exc)}")]
            for kind, line in said:
                if kind == "usage":
                    raise UsageError(line)
                if kind == "warning" and on_warning is not None:
                    on_warning(line)
                if kind == "error" and on_error is not None:
                    on_error(line, None)
            if report is None:
                report = ImageReport(str(job.src), None, status="failed", error=said[-1][1])
            if report.status == "ok":
                if on_start is not None:
                    on_start(index, job, report.tiles or 0)
                if on_tiles is not None:
                    on_tiles(report.tiles or 0)
            yield report

    def _huge(self, job: Job) -> bool:
        if job.skip or job.refused is not None:
            return False
        try:
            width, height = probe_size(job.src)
        except Exception:  # noqa: BLE001 - the job reports it, as locally
            return False
        return width * height > self.options.split_pixels

    def bands(self, image: np.ndarray, runner: Any, *, scale: float, config: TileConfig,
              on_tiles: Callable[[int], None] | None = None) -> Iterator[np.ndarray]:
        """The tiler of one huge image on the workers (an ``Upscaler.tiler``): bands of tile
        rows out, blended here in order; output rows as :func:`tiled_upscale` yields them."""
        py, px = config.plans(image.shape[0], image.shape[1], scale)
        per_band = max(1, BAND_BYTES // (4 * image.shape[2] * px.out_length * py.out_tile))
        groups = [range(i, min(i + per_band, py.count)) for i in range(0, py.count, per_band)]
        image_ref = self.ray.put(np.ascontiguousarray(image))
        handoff = self.ray.put(runner.handoff())
        pool = self.pool()
        for rows in groups:
            pool.submit(lambda worker, r: worker.band.remote(image_ref, handoff, r), rows)
        blender = Blender(py, px, image.shape[2], image.dtype)
        for rows in groups:
            top, sums, books = pool.get_next()
            yield from blender.flush(top)  # rows above this band are final
            blender.add_rows(top, sums)
            runner.add_books(books)
            if on_tiles is not None:
                on_tiles(len(rows) * px.count)
        yield from blender.flush(py.out_length)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1][:200] if text else type(exc).__name__
