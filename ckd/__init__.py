"""ckd: knowledge distillation against catastrophic forgetting, for Avalanche."""

__version__ = "0.1.0"

from ckd.plugins import KDReplayConfig, KDReplayPlugin  # noqa: E402

__all__ = ["KDReplayConfig", "KDReplayPlugin", "__version__"]
