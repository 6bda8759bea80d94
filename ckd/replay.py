"""The ``replay`` baseline: Avalanche's experience replay."""

from __future__ import annotations

from avalanche.training.plugins import ReplayPlugin

__all__ = ["ExperienceReplayPlugin"]


class ExperienceReplayPlugin(ReplayPlugin):
    """:class:`avalanche.training.plugins.ReplayPlugin`, its buffer updated after each
    experience through ``storage_policy.post_adapt``: the plugin's own call,
    ``storage_policy.update``, is deprecated in Avalanche 0.6 and re-enables its
    deprecation warning on every call, so no warning filter can silence it."""

    def after_training_exp(self, strategy, **kwargs) -> None:
        self.storage_policy.post_adapt(strategy, strategy.experience)
