"""The benchmark harness behind ``sr-tile bench`` and ``sr-tile data``.

``datasets`` resolves dataset names and folders and caches made LR images; ``run`` runs rows
(bicubic, static backbones, routed models, eta sweeps) over a dataset; ``report`` renders tables,
JSON and CSV; ``plot`` draws PSNR vs FLOPs (matplotlib, imported only when asked for);
``div8k`` builds Test2K/4K/8K from DIV8K.
"""

from sr_tile.bench.datasets import Dataset, LRCache, resolve_dataset
from sr_tile.bench.run import (
    DEFAULT_SWEEP,
    BenchOptions,
    BenchResult,
    RowSpec,
    plan_rows,
    run_bench,
)

__all__ = [
    "DEFAULT_SWEEP",
    "BenchOptions",
    "BenchResult",
    "Dataset",
    "LRCache",
    "RowSpec",
    "plan_rows",
    "resolve_dataset",
    "run_bench",
]
