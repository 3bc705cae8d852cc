"""ENAF's patch fusion, and a FLOPs budget on top of it.

For every patch the estimator predicts the PSNR ``u_j`` of each path j (path 0 =
bicubic), the blank vector ``b`` is [1,0,0,0] for patches with almost no edges,
and each path has a cost ``c_j`` (its executed FLOPs over the full network's, see
``EnafSR.costs``). The path taken is ``argmax_j u_j + gamma*b_j - eta*c_j``
(ENAF Eq. 9), written here as the least ``loss_j + eta*c_j`` (``psnr_losses``), the
form the texture router's losses take too (``sr_tile.models.enaf.texture``).

``--budget F`` (not in the paper) asks for an average cost of at most F times
the full network, estimator included, for this image: the chosen cost can only
fall as eta rises, so the smallest eta that meets the budget is found by
bisection over the image's own estimates.
"""

from __future__ import annotations

import torch

from sr_tile.errors import ConfigError
from sr_tile.routing import RoutingOptions

# Presets trade PSNR for FLOPs like the paper's ENAF-L/M/S. Each is an (eta,
# gamma) pair calibrated on training images for each shipped model and stored in
# its weights' metadata (sr_tile.models.enaf.calibrate); these are the fall-backs for
# weights without calibration (gamma 1 as in the paper's code).
DEFAULT_GAMMA = 1.0
DEFAULT_PRESETS: dict[str, dict[str, float]] = {
    "L": {"eta": 0.5, "gamma": DEFAULT_GAMMA},
    "M": {"eta": 1.0, "gamma": DEFAULT_GAMMA},
    "S": {"eta": 2.0, "gamma": DEFAULT_GAMMA},
}




def resolve(options: RoutingOptions, presets: dict[str, dict[str, float]]) -> tuple[float, float]:
    """(eta, gamma): explicit values win, the rest comes from the preset (M by default)."""
    chosen = presets[(options.preset or "M").upper()]
    eta = options.eta if options.eta is not None else chosen["eta"]
    gamma = options.gamma if options.gamma is not None else chosen.get("gamma", DEFAULT_GAMMA)
    return float(eta), float(gamma)


def psnr_losses(u: torch.Tensor, blank: torch.Tensor, gamma: float) -> torch.Tensor:
    """Eq. 9 as losses: (N, P) the estimated dB each patch loses on each path against the full
    network, ``u_full - u_j``, less ``gamma`` on path 0 for blank patches. ``fuse`` on them
    picks what ``argmax_j u_j + gamma*b_j - eta*c_j`` picks."""
    losses = u[:, -1:].float() - u.float()
    losses[:, 0] -= gamma * blank.float()
    return losses


def fuse(losses: torch.Tensor, costs: torch.Tensor, *, eta: float) -> torch.Tensor:
    """(N, P) each patch's loss on each path (``psnr_losses``, or the texture router's),
    (P,) normalised costs -> (N,) paths: ``argmin_j loss_j + eta * c_j``."""
    return (losses.float() + eta * costs.float()[None, :]).argmin(dim=1)


def mean_cost(losses: torch.Tensor, costs: torch.Tensor, *, eta: float,
              measure: torch.Tensor | None = None) -> float:
    """Average cost of the paths chosen at ``eta``, by ``measure`` (default: ``costs``)."""
    measure = costs if measure is None else measure
    return float(measure.float()[fuse(losses, costs, eta=eta)].mean())


def eta_for_budget(losses: torch.Tensor, costs: torch.Tensor, *, budget: float,
                   overhead: float = 0.0, measure: torch.Tensor | None = None,
                   iterations: int = 50) -> float:
    """Smallest eta whose mean cost + ``overhead`` (estimator, as a fraction) <= budget.

    ``measure``: the per-path costs the budget is in (default ``costs``, those of the fusion);
    both must rank the paths alike, so that the measured cost too only falls as eta rises.
    Raises ConfigError when even all-bicubic cannot meet the budget.
    """
    measure = costs if measure is None else measure
    if not bool((torch.diff(measure) >= 0).all() and (torch.diff(costs) >= 0).all()):
        raise ValueError("path costs must rise with the path index in both measures")
    target = budget - overhead
    if target < float(measure.min()):
        raise ConfigError(
            f"--budget {budget:.3f} is below the router's own cost ({overhead:.3f} of the network)"
        )
    if mean_cost(losses, costs, eta=0.0, measure=measure) <= target:
        return 0.0
    spread = float((losses.max(dim=1).values - losses.min(dim=1).values).max()) + 1.0
    lo, hi = 0.0, spread / max(float(costs[costs > 0].min()), 1e-9)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if mean_cost(losses, costs, eta=mid, measure=measure) <= target:
            hi = mid
        else:
            lo = mid
    return hi
