"""What the tiler and the reports need to know about a model, and nothing more.

The tiler reads a model's :class:`ModelDescriptor` instead of branching on model
names (spandrel's idea): a new architecture only fills in these fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Routing(str, Enum):
    """How a model spends compute unevenly across an image."""

    NONE = "none"  # static network: every patch costs the same
    EXITS = "exits"  # multi-exit network: one exit chosen per patch (ENAF)
    TOKENS = "tokens"  # token/window halting inside the network (AdaFormer)
    BRANCHES = "branches"  # attention branches switched per image and scale (TADT)

    @property
    def per_tile(self) -> bool:
        """Whether tiles (or their patches) are routed one by one, so that the tile grid is
        the decision grid; a route per image leaves the tiles free to fit the image."""
        return self in (Routing.EXITS, Routing.TOKENS)


@dataclass(frozen=True)
class ModelDescriptor:
    """Static facts about one built model.

    Attributes:
        name: registry name, e.g. ``"bicubic"`` or ``"enaf-fsrcnn"``.
        scale: the upscaling factor this instance was built for (an int for fixed-scale
            networks; any float > 1 for a model that samples an output grid).
        in_channels: colour channels the network takes (3: RGB).
        size_multiple: tile sides must be a multiple of this (window attention);
            the tiler pads with reflection where an image is smaller.
        margin: LR pixels at an interior tile edge whose output cannot be trusted
            (the receptive-field radius, or the practical one for deep nets). The
            tiler gives them zero weight, so overlap must exceed ``2 * margin``.
        exact_tiling: True when ``margin`` covers the whole receptive field, so
            tiled output equals whole-image output up to float rounding.
        default_tile: LR tile side used when the user gives none (a routed model's
            routing tile).
        static_tile: a routed model's best LR tile side when run as a static network
            (``--static``, bench's "static best" row) and the user gives none; None: the
            ``default_tile``. Small routing tiles recompute their overlap (32/8: 1.78x the
            image) where a static run needs none of it.
        static_overlap, static_margin: the overlap and margin of that static tiling; None:
            ``default_overlap`` and ``margin`` (ENAF-FSRCNN routes inside large tiles whose
            margin covers every cell's halo, which its static network does not need).
        default_overlap: LR overlap between neighbouring tiles by default.
        routing: how compute is routed per patch.
        flops_note: how the FLOPs of this model are counted, shown in reports.
        trained_scales: (low, high) the scales a model of any scale was trained on; asked for
            another, a run says its quality is out of distribution. None: no such range.
        precisions: what ``--precision`` it runs in (autocast to bf16/fp16 keeps its
            reductions in fp32; a model whose numerics break there leaves them out).
        batch_pixels: LR pixels per forward pass when the user gives no ``--batch-size``
            (the batch is this over a tile's area, at least 1): a model that needs much
            memory per pixel sets fewer.
    """

    name: str
    scale: float
    in_channels: int = 3
    size_multiple: int = 1
    margin: int = 0
    exact_tiling: bool = False
    default_tile: int = 256
    default_overlap: int = 16
    static_tile: int | None = None
    static_overlap: int | None = None
    static_margin: int | None = None
    routing: Routing = Routing.NONE
    flops_note: str = ""
    trained_scales: tuple[float, float] | None = None
    precisions: tuple[str, ...] = ("fp32", "bf16", "fp16")
    batch_pixels: int = 65536

    def __post_init__(self) -> None:
        if self.default_overlap <= 2 * self.margin:
            raise ValueError(
                f"{self.name}: default_overlap {self.default_overlap} must exceed 2*margin"
            )
        if self.static_tiling[1] <= 2 * self.static_tiling[2]:
            raise ValueError(f"{self.name}: static_overlap must exceed 2*static_margin")

    @property
    def static_tiling(self) -> tuple[int, int, int]:
        """(tile, overlap, margin) of a static run (``--static``) when the user gives none."""
        return (self.static_tile or self.default_tile,
                self.default_overlap if self.static_overlap is None else self.static_overlap,
                self.margin if self.static_margin is None else self.static_margin)
