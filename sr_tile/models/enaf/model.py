"""ENAF: a multi-exit backbone plus its PSNR estimator, routed per patch.

This is what ``--model enaf-fsrcnn|enaf-carn|enaf-srresnet`` builds. ``forward``
is the static backbone (the full network); routed inference goes through
``estimate`` (per-path PSNR and blank flags of a batch of patches) and
``backbone.forward_paths``. The upscaler's runner gets the same estimates for every tile
of an image from one pass over the image (``sr_tile.upscale.ExitRunner``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sr_tile.flops import Convention, count_flops
from sr_tile.models.enaf import texture
from sr_tile.models.enaf.estimator import PSNREstimator, is_blank
from sr_tile.models.enaf.multiexit import MultiExitSR
from sr_tile.models.enaf.routing import DEFAULT_PRESETS

# The estimator reads a patch as (h/8)x(w/8) sub-tiles of 8x8 LR px, and their PSNRs are
# combined like the PSNR of one image: by the mean of their MSEs (not in the paper, which runs
# it on the whole patch). A patch's PSNR is set by its worst part, but ClassSR's global average
# pool dilutes a thin line on a flat patch (a kite string, dandelion filaments) into a "flat"
# estimate, and the patch goes to bicubic with a loss of 4-7 dB. Same convolutions, so the
# same FLOPs (the final linear layer runs once per sub-tile: +3,840 per 32x32 patch).
# It is trained the way it reads: on every sub-tile's own PSNRs (``sr_tile.train.loop``).
# Trained on the patch's PSNRs and read by sub-tiles, its gains came out ~4x too large (val
# gain MAE 3.3 dB) and the presets that kept 0.05 dB needed more of the network.
ESTIMATOR_PART = 8


class EnafSR(nn.Module):
    """``backbone`` (paths 0-3) + ``estimator`` (one PSNR per path)."""

    def __init__(self, *, backbone: MultiExitSR) -> None:
        super().__init__()
        self.backbone = backbone
        self.estimator = PSNREstimator(num_paths=backbone.num_paths)
        self.descriptor = backbone.descriptor
        self.scale = backbone.scale
        self.presets: dict[str, dict[str, float]] = {k: dict(v) for k, v in DEFAULT_PRESETS.items()}
        self.router = None
        self._estimator_flops: dict[tuple[int, int], int] = {}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        """Load weights; the estimator takes as many context layers as ``state_dict`` holds
        (files trained before they existed have none, and load as they were). A partial
        state without the estimator leaves it as it is."""
        if any(key.startswith("estimator.") for key in state_dict):
            prefix = "estimator.context."
            layers = {key[len(prefix):].split(".")[0] for key in state_dict
                      if key.startswith(prefix)}
            self.estimator.set_context(len(layers))
            self._estimator_flops.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def router(self) -> dict[str, Any] | None:
        """The texture router fitted at calibration (``sr_tile.models.enaf.texture``), read
        from the weights' metadata; None: Eq. 9 on the estimator's PSNRs."""
        return self._router

    @router.setter
    def router(self, value: dict[str, Any] | None) -> None:
        self._router = None if value is None else texture.checked(value, self.num_paths)

    @property
    def runner_cls(self) -> type:
        """The runner that routes tiles through this model (``sr_tile.runner.make_runner``)."""
        from sr_tile.models.enaf.runner import ExitRunner

        return ExitRunner

    def onnx_parts(self) -> list:
        """How ENAF exports to ONNX (``sr_tile.deploy.onnx``): see ``enaf.onnx``."""
        from sr_tile.models.enaf.onnx import enaf_parts

        return enaf_parts(self)

    @property
    def num_paths(self) -> int:
        return self.backbone.num_paths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def estimate(self, x: torch.Tensor, *, blank: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, P) predicted PSNR per path and (N,) blank flags of LR patches in [0, 1].

        ``blank=False`` skips the blank test (all False), for routing with gamma 0.
        """
        flags = is_blank(x) if blank else torch.zeros(x.shape[0], dtype=torch.bool,
                                                        device=x.device)
        return self.predict_psnr(x), flags

    def predict_psnr(self, x: torch.Tensor) -> torch.Tensor:
        """(N, P) the estimator's PSNR per path, read by sub-tiles (see ``ESTIMATOR_PART``)."""
        return self.estimator(x, self.estimator_part(*x.shape[-2:]))

    @staticmethod
    def estimator_part(height: int, width: int) -> int | None:
        """``ESTIMATOR_PART``, or None (the whole patch) when it does not divide both sides."""
        return None if height % ESTIMATOR_PART or width % ESTIMATOR_PART else ESTIMATOR_PART

    def costs(self, height: int, width: int, convention: Convention = "executed") -> torch.Tensor:
        """(P,) each path's FLOPs over the full network's, for one patch size.

        Routing (Eq. 9's ``c``) uses the ``executed`` convention, the work that actually runs
        (for these convnets the ``torch`` count, without its ~2 s first-use import).
        ``classsr`` counts FSRCNN's deconvs at output resolution, 16x what the (sub-pixel)
        kernels do, which made exit 2 look 33% cheaper than the full network when it costs
        the same time; reports and ``--budget`` keep ``classsr``, the papers' convention.
        """
        flops = torch.tensor(self.backbone.path_flops(height, width, convention),
                             dtype=torch.float64)
        return flops / flops[-1]

    def estimator_flops(self, height: int, width: int) -> int:
        key = (height, width)
        if key not in self._estimator_flops:
            part = self.estimator_part(height, width)
            self._estimator_flops[key] = count_flops(
                self.estimator, (1, 3, height, width),
                inputs_fn=lambda shape, device: (torch.zeros(shape, device=device), part))
        return self._estimator_flops[key]
