"""ENAF's patch fusion, and a FLOPs budget on top of it.

For every patch the estimator predicts the PSNR ``u_j`` of each path j (path 0 =
bicubic), the blank vector ``b`` is [1,0,0,0] for patches with almost no edges,
and each path has a cost ``c_j`` (its FLOPs over the full network's). The path
taken is ``argmax_j u_j + gamma*b_j - eta*c_j`` (ENAF Eq. 9).

``--budget F`` (not in the paper) asks for an average cost of at most F times
the full network, estimator included, for this image: the chosen cost can only
fall as eta rises, so the smallest eta that meets the budget is found by
bisection over the image's own estimates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sr_tile.errors import ConfigError

# Presets trade PSNR for FLOPs like the paper's ENAF-L/M/S. They are the etas
# calibrated on the val set for each shipped model (stored in its weights'
# metadata); these are the fall-backs for weights without calibration.
DEFAULT_PRESETS = {"L": 0.5, "M": 1.0, "S": 2.0}
DEFAULT_GAMMA = 1.0


@dataclass(frozen=True)
class RoutingOptions:
    """How patches are routed. ``eta`` None: take the preset's (default preset M)."""

    eta: float | None = None
    gamma: float = DEFAULT_GAMMA
    preset: str | None = None
    budget: float | None = None  # average FLOPs as a fraction of the full network
    path: int | None = None  # force one path for every tile (per-exit baselines); no estimator

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset.upper() not in DEFAULT_PRESETS:
            raise ConfigError(f"--preset must be one of L, M, S, not {self.preset!r}")
        if self.budget is not None and not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"--budget must be in (0, 1], got {self.budget}")
        if self.eta is not None and self.eta < 0:
            raise ConfigError(f"--eta must be >= 0, got {self.eta}")
        if sum(x is not None for x in (self.eta, self.preset, self.budget, self.path)) > 1:
            raise ConfigError("give at most one of --eta, --preset and --budget")
        if self.path is not None and self.path < 0:
            raise ConfigError(f"path must be >= 0, got {self.path}")

    def resolve_eta(self, presets: dict[str, float]) -> float:
        if self.eta is not None:
            return self.eta
        return presets[(self.preset or "M").upper()]


def fuse(u: torch.Tensor, blank: torch.Tensor, costs: torch.Tensor, *, eta: float,
         gamma: float) -> torch.Tensor:
    """Eq. 9: (N, P) estimates, (N,) blank flags, (P,) normalised costs -> (N,) paths."""
    score = u.float() - eta * costs.float()[None, :]
    score[:, 0] += gamma * blank.float()
    return score.argmax(dim=1)


def mean_cost(u: torch.Tensor, blank: torch.Tensor, costs: torch.Tensor, *, eta: float,
              gamma: float) -> float:
    """Average normalised cost of the paths chosen at ``eta``."""
    return float(costs.float()[fuse(u, blank, costs, eta=eta, gamma=gamma)].mean())


def eta_for_budget(u: torch.Tensor, blank: torch.Tensor, costs: torch.Tensor, *,
                   gamma: float, budget: float, overhead: float = 0.0,
                   iterations: int = 50) -> float:
    """Smallest eta whose mean cost + ``overhead`` (estimator, as a fraction) <= budget.

    Raises ConfigError when even all-bicubic cannot meet the budget.
    """
    target = budget - overhead
    if target < float(costs.min()):
        raise ConfigError(
            f"--budget {budget:.3f} is below the router's own cost ({overhead:.3f} of the network)"
        )
    if mean_cost(u, blank, costs, eta=0.0, gamma=gamma) <= target:
        return 0.0
    spread = float((u.max(dim=1).values - u.min(dim=1).values).max()) + gamma + 1.0
    lo, hi = 0.0, spread / max(float(costs[costs > 0].min()), 1e-9)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_cost(u, blank, costs, eta=mid, gamma=gamma) <= target:
            hi = mid
        else:
            lo = mid
    return hi
