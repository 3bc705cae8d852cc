"""The options of a routed model, as the command line and bench give them.

A family's runner reads what applies to it: ENAF's router (``sr_tile.models.enaf.routing``)
takes an (eta, gamma) preset, an explicit eta/gamma, or a FLOPs budget; ``path`` forces one
path for every tile (per-exit baseline rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from sr_tile.errors import UsageError

PRESET_NAMES = ("L", "M", "S")  # quality ... speed; each model stores its own values
DEFAULT_SWEEP: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0)  # bench --sweep default


@dataclass(frozen=True)
class RoutingOptions:
    """How patches are routed. ``eta``/``gamma`` None: the preset's (default preset M)."""

    eta: float | None = None
    gamma: float | None = None
    preset: str | None = None
    budget: float | None = None  # average FLOPs as a fraction of the full network
    path: int | None = None  # force one path for every tile (per-exit baselines); no estimator

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset.upper() not in PRESET_NAMES:
            raise UsageError(f"--preset must be one of L, M, S, not {self.preset!r}")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise UsageError(f"--budget must be in (0, 1], got {self.budget}")
        if self.eta is not None and self.eta < 0:
            raise UsageError(f"--eta must be >= 0, got {self.eta}")
        if sum(x is not None for x in (self.eta, self.preset, self.budget, self.path)) > 1:
            raise UsageError("give at most one of --eta, --preset and --budget")
        if self.path is not None and self.path < 0:
            raise UsageError(f"path must be >= 0, got {self.path}")

    def refuse(self, why: str, *, keep: tuple[str, ...] = ()) -> None:
        """UsageError naming the first option set that a family does not take (``keep``: the
        flags it does take), followed by ``why``."""
        given = [flag for flag, value in (("--eta", self.eta), ("--gamma", self.gamma),
                                          ("--budget", self.budget), ("--preset", self.preset),
                                          ("a fixed path", self.path))
                 if value is not None and flag not in keep]
        if given:
            raise UsageError(f"{given[0]}: {why}")
