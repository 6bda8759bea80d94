"""Training-time augmentation of every forwarded row, as the strategy's ``forward`` runs
(the transforms are :mod:`ckd.data.augmentation`'s)."""

from __future__ import annotations

from ckd.data.augmentation import CropFlip
from ckd.engines.wrapping import StrategyWrappingPlugin

__all__ = ["AugmentationPlugin"]


class AugmentationPlugin(StrategyWrappingPlugin):
    """Augments every row of the training minibatch as it enters the model.

    It wraps the strategy's ``forward``, so it runs after every ``before_forward``
    hook and after a strategy's own additions: the replayed rows a
    ``KDReplayPlugin`` appends and those Avalanche's ``DER`` appends are augmented
    with the current ones, wherever the plugin sits in the list. Plugins that read
    ``strategy.mbatch`` after the forward see the augmented views. Evaluation is
    untouched. Draws from the torch generator of the batch's device.
    """

    def __init__(self, augmentation: CropFlip) -> None:
        super().__init__()
        self.augmentation = augmentation

    def wrap(self, strategy) -> None:
        forward = strategy.forward

        def augmented_forward():
            if strategy.is_training:
                strategy.mbatch[0] = self.augmentation(strategy.mbatch[0])
            return forward()

        self.replace(strategy, "forward", augmented_forward)

    def state_dict(self) -> dict:  # draws from the global generators, which a checkpoint saves
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
