"""A batch of jobs: the per-file policy of a run, and images that overlap.

:func:`run_jobs` is how a run treats its files, whoever drives it (the CLI now, a cluster
later): a skipped job is reported skipped, a refused one failed with its line, a file that
fails in any way fails alone, and a bad option (``UsageError``) stops the run.

With ``in_flight`` > 1 the jobs are pipelined: up to that many images are decoded, upscaled
and encoded at once in threads, while the model computes one band of one of them at a time
(``Upscaler``'s lock). So the next image decodes and the last one's encoder runs while this
one computes, and the CPU (or GPU) is not idle during I/O. Memory: ``in_flight`` images at
once, each streamed as when alone. Reports come back in job order.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from sr_tile.errors import SrTileError, UsageError
from sr_tile.paths import Job
from sr_tile.upscale import Cancelled, ImageReport, Upscaler

_WARNING = Exception("a warning line")  # marks warnings among a job's buffered lines

#: ``on_start(index, job, total_tiles)``: job ``index`` (1-based) starts computing.
StartFn = Callable[[int, Job, int], None]
#: ``on_error(message, exc)``: a job failed with this one line (``exc`` None: refused).
ErrorFn = Callable[[str, BaseException | None], None]


def default_in_flight(upscaler: Upscaler) -> int:
    """Images in flight by default: 2 when the model runs on a GPU, 1 on the CPU.

    On the CPU the PNG encoder's threads already run beside the compute (blocks are
    compressed as bands come) and TIFF tiles compress on every core, so a second image only
    competes for the same cores:
    measured on this project's 2-core machine, the 6 val photos x4 to PNG took 105 s one at
    a time and 119 s with 2 in flight (``benchmarks/pipeline.py``)."""
    return 2 if upscaler.device.type == "cuda" else 1


def run_job(upscaler: Upscaler, job: Job, index: int = 1, *, on_start: StartFn | None = None,
            on_tiles: Callable[[int], None] | None = None,
            on_warning: Callable[[str], None] | None = None, on_error: ErrorFn | None = None,
            cancel: threading.Event | None = None, own_runner: bool = False) -> ImageReport:
    """One job, whatever happens to it: its report, with its one-line error if it failed.

    ``own_runner``: keep this job's books in a runner of its own (jobs run at once)."""
    if job.skip:
        return ImageReport(str(job.src), str(job.dst), status="skipped")
    message, exc = job.refused, None
    if message is None:
        try:
            for target in (job.dst, job.route_map):
                if target is not None:
                    target.parent.mkdir(parents=True, exist_ok=True)
            return upscaler.upscale_file(
                job.src, job.dst,
                on_start=None if on_start is None else lambda n: on_start(index, job, n),
                on_tiles=on_tiles, on_warning=on_warning, route_map=job.route_map,
                runner=upscaler.new_runner() if own_runner else None, cancel=cancel)
        except UsageError:
            raise  # a bad option is every job's problem: the run stops
        except Cancelled:
            return ImageReport(str(job.src), None, status="not run")
        except Exception as error:  # noqa: BLE001 - whatever it is, this file fails alone
            message, exc = job_error(job, error), error
    if on_error is not None:
        on_error(message, exc)
    return ImageReport(str(job.src), None, status="failed", error=message)


def job_error(job: Job, exc: Exception) -> str:
    """One line for a job's failure, naming its file."""
    if isinstance(exc, SrTileError):
        return str(exc)
    if isinstance(exc, OSError):  # a folder that cannot be made, a disk error
        return f"{exc.filename or job.dst}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return (f"{job.src}: not enough memory to upscale this image "
                "(a smaller --batch-size or --tile may help)")
    return f"{job.src}: internal error: {type(exc).__name__}: {exc} (rerun with --debug)"


def run_jobs(upscaler: Upscaler, jobs: Iterable[Job], *, in_flight: int = 1,
             on_start: StartFn | None = None, on_tiles: Callable[[int], None] | None = None,
             on_warning: Callable[[str], None] | None = None,
             on_error: ErrorFn | None = None) -> Iterator[ImageReport]:
    """The report of every job, in order; ``in_flight`` jobs at once (1: one after another).

    Interrupted (Ctrl-C, a stop signal), the jobs under way stop before their next band
    (their temp files removed), the reports of those that finished are still yielded, in
    order, the stopped ones as "not run", and the interrupt is raised again."""
    hooks = {"on_start": on_start, "on_tiles": on_tiles, "on_warning": on_warning,
             "on_error": on_error}
    if in_flight <= 1:
        for index, job in enumerate(jobs, 1):
            yield run_job(upscaler, job, index, **hooks)
        return
    cancel = threading.Event()
    pool = ThreadPoolExecutor(in_flight, thread_name_prefix="sr-tile-job")
    pending: deque[tuple[Future[ImageReport], list[tuple[str, BaseException | None]]]] = deque()

    def report(future: Future[ImageReport], said: list) -> ImageReport:
        """The job's report, after its warning and error lines: in job order, whichever
        job decoded or failed first."""
        result = future.result()
        for line, exc in said:
            if exc is _WARNING:
                if on_warning is not None:
                    on_warning(line)
            elif on_error is not None:
                on_error(line, exc)
        return result

    try:
        for index, job in enumerate(jobs, 1):
            said: list[tuple[str, BaseException | None]] = []
            pending.append((pool.submit(
                run_job, upscaler, job, index, on_start=on_start, on_tiles=on_tiles,
                on_warning=lambda line, said=said: said.append((line, _WARNING)),
                on_error=lambda line, exc, said=said: said.append((line, exc)),
                cancel=cancel, own_runner=True), said))
            if len(pending) >= in_flight:
                yield report(*pending.popleft())
        while pending:
            yield report(*pending.popleft())
    except KeyboardInterrupt:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, said in pending:  # in order, up to the first that has no report
            if not future.done() or future.cancelled() or future.exception() is not None:
                break
            yield report(future, said)
        raise
    finally:
        cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
