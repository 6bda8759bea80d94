"""Mixed-precision training of an Avalanche strategy: autocast forward, float32 losses.

The model's forward pass runs under ``torch.autocast`` in bfloat16 or float16
and its output is cast back to float32, so every loss the strategy and the
plugins add afterwards (cross-entropy, the soft KL of ``ckd.distillation.losses``) is computed
in float32. float16 also scales the loss (``torch.amp.GradScaler``): gradients
that would underflow in float16 survive, and a step whose gradients overflowed
is skipped. bfloat16 has float32's range and needs no scaling, and no host sync
(the scaler reads its overflow flag on the host once per step).
"""

from __future__ import annotations

import torch

from ckd.engines.wrapping import StrategyWrappingPlugin

__all__ = ["AMP_DTYPES", "MixedPrecisionPlugin"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class MixedPrecisionPlugin(StrategyWrappingPlugin):
    """While the strategy trains, its ``forward`` runs under autocast (``dtype``:
    ``"bf16"`` or ``"fp16"``) and returns float32 outputs; with ``fp16`` its
    ``backward`` scales the loss and its ``optimizer_step`` unscales, skips
    non-finite steps and updates the scale. Evaluation runs in float32.
    ``device_type``: ``"cuda"`` or ``"cpu"``.

    ``teachers=True`` (the default) runs the teachers' forward passes of the ckd plugins
    (the soft targets of ``KDReplayPlugin`` and ``CurrentDistillationPlugin``, the features
    of the feature and relation plugins) under the same autocast, their outputs cast to
    float32 before any loss; ``False``: in float32, as ckd ran them before this option existed.
    Logits cached in the buffer at the end of an experience (``teacher="cached"``) stay float32.

    The strategy's methods are wrapped once, when it first trains, and the
    wrappers act only while ``strategy.is_training``; other plugins may wrap them too.
    """

    def __init__(self, dtype: str, device_type: str = "cuda", teachers: bool = True) -> None:
        super().__init__()
        if dtype not in AMP_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(AMP_DTYPES)}, got {dtype!r}")
        if device_type not in ("cuda", "cpu"):
            raise ValueError(f"device_type must be 'cuda' or 'cpu', got {device_type!r}")
        if not isinstance(teachers, bool):
            raise ValueError(f"teachers must be true or false, got {teachers!r}")
        self.dtype = AMP_DTYPES[dtype]
        self.device_type = device_type
        self.teachers = teachers
        self.scaler = torch.amp.GradScaler(device_type) if dtype == "fp16" else None

    def wrap(self, strategy) -> None:
        forward = strategy.forward

        def autocast_forward():
            if not strategy.is_training:
                return forward()
            with torch.autocast(self.device_type, dtype=self.dtype):
                output = forward()
            return output.float()

        self.replace(strategy, "forward", autocast_forward)
        if self.scaler is not None:
            scaler = self.scaler

            def scaled_backward():
                scaler.scale(strategy.loss).backward(retain_graph=getattr(strategy, "retain_graph", False))

            def scaled_step():
                scaler.step(strategy.optimizer)
                scaler.update()

            self.replace(strategy, "backward", scaled_backward)
            self.replace(strategy, "optimizer_step", scaled_step)

    def teacher_autocast(self) -> torch.autocast | None:
        """The autocast the teachers' forward passes run under (read by
        ``ckd.distillation.plugin_base.teacher_precision``); ``None``: float32."""
        return torch.autocast(self.device_type, dtype=self.dtype) if self.teachers else None

    def state_dict(self) -> dict:
        """The fp16 loss scale (``None`` in bf16)."""
        return {"scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
