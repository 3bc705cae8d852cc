"""IET (individualized exploratory transformer): attention over a content-adaptive candidate
set per token.

The family's package: the individualized attention and its candidate bookkeeping
(``attention``), the model (``model``) and its training task (``training``). It runs every
tile the same way (no routing). The registry builds these models through :func:`build`.
"""

from __future__ import annotations

from dataclasses import replace

from sr_tile.models.iet.model import IET, IETConfig

#: ``iet-light`` is the paper's light model (dim 54, 8 groups x 3 layers, 3 heads); ``iet`` the
#: classical one (dim 240, 8 x 4, 6 heads).
VARIANTS: dict[str, IETConfig] = {
    "iet-light": IETConfig(),
    "iet": IETConfig(dim=240, layers=4, heads=6,
                     keep=tuple((256, 192, 128, 64) if g == 0 else (128, 96, 64, 64)
                                for g in range(8))),
}


def build(*, variant: str = "iet-light", scale: int = 4) -> IET:
    if variant not in VARIANTS:
        raise ValueError(f"unknown IET variant {variant!r}; choose {', '.join(VARIANTS)}")
    return IET(replace(VARIANTS[variant], scale=scale), name=variant)


__all__ = ["VARIANTS", "IET", "IETConfig", "build"]
