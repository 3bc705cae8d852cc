"""ENAF (Efficient Network with Adaptive Forwarding): multi-exit CNNs routed per patch.

The family's package: architectures (``fsrcnn``, ``carn``, ``srresnet`` on the common
:class:`~sr_tile.models.enaf.multiexit.MultiExitSR`), the PSNR estimator and blank vector
(``estimator``), the fusion of Eq. 9 with presets and budgets (``routing``), the model that
joins them (``model.EnafSR``) and the runner that routes tiles (``runner.ExitRunner``).
The registry builds these models through :func:`build`.
"""

from __future__ import annotations

import importlib

from sr_tile.models.enaf.model import EnafSR

BACKBONES = ("fsrcnn", "carn", "srresnet")


def build(*, backbone: str, scale: int = 4) -> EnafSR:
    """ENAF with ``backbone`` (fsrcnn, carn or srresnet) at ``scale``."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown ENAF backbone {backbone!r}; choose {', '.join(BACKBONES)}")
    module = importlib.import_module(f"sr_tile.models.enaf.{backbone}")
    return EnafSR(backbone=module.build(scale=scale))


__all__ = ["BACKBONES", "EnafSR", "build"]
