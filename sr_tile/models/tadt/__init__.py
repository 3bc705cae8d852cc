"""TADT (ECCV 2024): arbitrary-scale SR with a task-aware dynamic transformer extractor and a
LIIF, MetaSR or LTE upsampler.

The family's package: the extractor, controller and model (``model``), the runner that routes
each image once (``runner.BranchRunner``). The registry builds these models through
:func:`build`.
"""

from __future__ import annotations

from dataclasses import replace

from sr_tile.models.tadt.model import TADT, TADTConfig

#: ``tadt`` is the paper's extractor; ``tadt-light`` (C = 64, N = 4, global window 32 pooled
#: to 8) is the one sized for this CPU.
VARIANTS: dict[str, TADTConfig] = {
    "tadt": TADTConfig(),
    "tadt-light": TADTConfig(channels=64, groups=4, global_window=32, pooled=8, head_dim=16),
}


def build(*, variant: str = "tadt", upsampler: str = "liif", scale: float = 4.0) -> TADT:
    """TADT ``variant`` with ``upsampler`` (liif, metasr or lte) at any ``scale`` > 1."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown TADT variant {variant!r}; choose {', '.join(VARIANTS)}")
    return TADT(replace(VARIANTS[variant], scale=scale, upsampler=upsampler), name=variant)


__all__ = ["VARIANTS", "TADT", "TADTConfig", "build"]
