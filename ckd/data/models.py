"""Backbones used by the benchmark runner."""

from __future__ import annotations

import math

from torch import Tensor, nn
from torch.nn import functional as F

from ckd.data.user_code import call_with_accepted, is_reference, load_callable

__all__ = [
    "MODELS", "CosineLinear", "ResNet18", "make_model", "mlp", "reduced_resnet18", "reduced_resnet18_cosine",
    "resnet18", "small_cnn",
]


def mlp(input_shape: tuple[int, ...], n_classes: int, hidden: int = 100) -> nn.Module:
    """The DER-paper MLP: flatten, two hidden ReLU layers of ``hidden`` units, linear head."""
    d = math.prod(input_shape)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(d, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, n_classes),
    )


def small_cnn(input_shape: tuple[int, ...], n_classes: int, width: int = 32) -> nn.Module:
    """Two 3×3 conv blocks (conv, ReLU, 2×2 max-pool), then a linear head. Input ``(B, C, H, W)``."""
    c, h, w = input_shape
    out_hw = (h // 4) * (w // 4)
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * out_hw, n_classes),
    )


def _conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3×3 conv-BN layers and a shortcut (1×1 conv-BN when the shape changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """The ResNet-18 of the DER authors' code for CIFAR and Tiny ImageNet.

    Unlike torchvision's ImageNet ResNet-18: a 3×3 stem convolution with stride 1
    and no max-pool, so 32×32 inputs keep their resolution in ``layer1``. Widths
    ``nf, 2nf, 4nf, 8nf`` (strides 1, 2, 2, 2), global average pooling, linear head.

    Input ``(B, C, H, W)``; ``features(x)``: ``(B, 8·nf)``, the input of ``linear``
    (what ``ckd.distillation.parts.feature_distillation`` calls ``"penultimate"``). Named modules for
    feature hooks: ``layer1`` … ``layer4`` (``(B, 8·nf, H/8, W/8)`` out of ``layer4``),
    ``pool`` and ``flatten``.
    """

    def __init__(self, in_channels: int, n_classes: int, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, nf)
        self.bn1 = nn.BatchNorm2d(nf)
        widths, strides = (nf, 2 * nf, 4 * nf, 8 * nf), (1, 2, 2, 2)
        in_planes, layers = nf, []
        for planes, stride in zip(widths, strides):
            layers.append(nn.Sequential(BasicBlock(in_planes, planes, stride), BasicBlock(planes, planes)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(8 * nf, n_classes)

    def features(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.flatten(self.pool(out))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.features(x))


def resnet18(input_shape: tuple[int, ...], n_classes: int, nf: int = 64) -> nn.Module:
    """:class:`ResNet18` for images of ``input_shape = (C, H, W)``."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18 needs image inputs (C, H, W), got input_shape {tuple(input_shape)}")
    return ResNet18(input_shape[0], n_classes, nf)


def reduced_resnet18(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """The reduced ResNet-18 of the online continual-learning papers (GEM, ER-ACE, OCM):
    :class:`ResNet18` with ``nf = 20`` (widths 20, 40, 80, 160)."""
    return resnet18(input_shape, n_classes, nf=20)


class CosineLinear(nn.Module):
    """A cosine-similarity head: ``scale · cos(x, w_c)`` for each class ``c``, no bias (the
    ``distLinear`` head of the ER-ACE authors' code, scale 10). Input ``(B, in_features)``."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.Linear(in_features, out_features, bias=False).weight.detach().clone())
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))


def reduced_resnet18_cosine(input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """:func:`reduced_resnet18` with a :class:`CosineLinear` head (scale 10): the model the
    ER-ACE authors' code trains ER-ACE with (their ER keeps the linear head)."""
    model = reduced_resnet18(input_shape, n_classes)
    model.linear = CosineLinear(model.linear.in_features, n_classes)
    return model


MODELS = {
    "mlp": mlp, "cnn": small_cnn, "resnet18": resnet18, "reduced-resnet18": reduced_resnet18,
    "reduced-resnet18-cosine": reduced_resnet18_cosine,
}


def make_model(name: str, input_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    """Model ``name`` (see ``MODELS``) or a user's ``package.module:function``, called
    with the keyword arguments it declares among ``input_shape`` and ``n_classes``."""
    if is_reference(name):
        given = {"input_shape": tuple(input_shape), "n_classes": n_classes}
        model = call_with_accepted(load_callable(name, "model"), name, given)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
        return model
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)} or package.module:function, got {name!r}")
    return MODELS[name](tuple(input_shape), n_classes)
