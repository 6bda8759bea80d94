"""ckd: knowledge distillation against catastrophic forgetting, for Avalanche."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["KDReplayConfig", "KDReplayPlugin", "__version__"]


def __getattr__(name: str):
    # The plugins import Avalanche (slow); metrics, summaries and plots do not need it.
    if name in ("KDReplayConfig", "KDReplayPlugin"):
        import ckd.distillation.plugin as plugins

        return getattr(plugins, name)
    raise AttributeError(f"module 'ckd' has no attribute {name!r}")
