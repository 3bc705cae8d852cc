"""AdaFormer (AAAI-24): a transformer that halts tokens and windows once a confidence
estimator says that they are restored.

The family's package: the architecture and its two halting forwards (``model``), the runner
that halts for real and keeps the books (``runner.HaltingRunner``) and the training task
(``training.AdaFormerTask``). The registry builds these models through :func:`build`.
"""

from __future__ import annotations

from dataclasses import replace

from sr_tile.models.adaformer.model import AdaFormer, AdaFormerConfig, HaltingTrace

#: Named variants. ``adaformer`` is the paper's; ``adaformer-light`` keeps its six halting
#: TSABs and thins the rest (C = D = 48, 2 + 2 residual blocks) so that it trains on a CPU and
#: the attention, where halting saves, is most of its work.
VARIANTS: dict[str, AdaFormerConfig] = {
    "adaformer": AdaFormerConfig(),
    "adaformer-light": AdaFormerConfig(channels=48, dim=48, encoder_blocks=2, decoder_blocks=2),
}


def build(*, variant: str = "adaformer", scale: int = 4) -> AdaFormer:
    """AdaFormer ``variant`` at ``scale``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown AdaFormer variant {variant!r}; choose {', '.join(VARIANTS)}")
    return AdaFormer(replace(VARIANTS[variant], scale=scale), name=variant)


__all__ = ["VARIANTS", "AdaFormer", "AdaFormerConfig", "HaltingTrace", "build"]
