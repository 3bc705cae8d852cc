"""The benchmark harness behind ``sr-tile bench`` and ``sr-tile data``.

``datasets`` resolves dataset names and folders and caches made LR images; ``run`` runs rows
(bicubic, static backbones, routed models, eta sweeps) over a dataset; ``report`` renders tables,
JSON and CSV; ``plot`` draws PSNR vs FLOPs (matplotlib, imported only when asked for);
``div8k`` builds Test2K/4K/8K from DIV8K.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "sr_tile.bench.datasets",
    "LRCache": "sr_tile.bench.datasets",
    "resolve_dataset": "sr_tile.bench.datasets",
    "DEFAULT_SWEEP": "sr_tile.bench.run",
    "BenchOptions": "sr_tile.bench.run",
    "BenchResult": "sr_tile.bench.run",
    "RowSpec": "sr_tile.bench.run",
    "plan_rows": "sr_tile.bench.run",
    "run_bench": "sr_tile.bench.run",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:  # imported on first use: `sr-tile --help` stays light
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sr_tile.bench' has no attribute {name!r}")
