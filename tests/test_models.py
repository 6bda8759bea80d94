"""Tests for ``ckd.data.models``: the DER ResNet-18 and user-defined models."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from ckd.data.models import CosineLinear, ResNet18, make_model
from ckd.distillation.parts.feature_distillation import PENULTIMATE, _capture


def test_resnet18_shapes_and_size_for_cifar():
    torch.manual_seed(0)
    model = make_model("resnet18", (3, 32, 32), 10)
    assert isinstance(model, ResNet18)
    # 11,173,962 parameters: the DER authors' CIFAR-10 ResNet-18 (nf = 64, 10 classes)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    x = torch.randn(2, 3, 32, 32)
    with _capture(model, ["layer1", "layer4", PENULTIMATE]) as features:
        logits = model(x)
    assert logits.shape == (2, 10)
    # 3x3 stem with stride 1 and no max-pool: layer1 keeps 32x32; layer4 is 4x4
    assert features["layer1"].shape == (2, 64, 32, 32)
    assert features["layer4"].shape == (2, 512, 4, 4)
    assert torch.allclose(features[PENULTIMATE], features["layer4"].mean(dim=(2, 3)))
    assert torch.allclose(features[PENULTIMATE], model.features(x))


def test_resnet18_on_tiny_imagenet_and_one_channel_inputs():
    model = make_model("resnet18", (3, 64, 64), 200)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 200)
    gray = make_model("resnet18", (1, 28, 28), 10)
    assert gray.conv1.in_channels == 1 and gray(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="input_shape"):
        make_model("resnet18", (784,), 10)


def test_cosine_head_scores_scaled_cosines_and_ignores_the_features_norm():
    torch.manual_seed(0)
    model = make_model("reduced-resnet18-cosine", (3, 32, 32), 10)
    head = model.linear
    assert isinstance(head, CosineLinear) and not hasattr(head, "bias") and head.weight.shape == (10, 160)
    x = torch.randn(3, 160)
    w = head.weight.detach()
    by_hand = torch.stack([torch.stack([10 * (x[i] @ w[c]) / (x[i].norm() * w[c].norm()) for c in range(10)])
                           for i in range(3)])
    assert torch.allclose(head(x), by_hand, atol=1e-5)
    assert torch.allclose(head(7.0 * x), head(x), atol=1e-5)
    assert model(torch.randn(2, 3, 32, 32)).abs().max() <= 10.0 + 1e-4
    linear = make_model("reduced-resnet18", (3, 32, 32), 10)  # the same trunk, nf = 20
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in linear.parameters()) - 10


def test_shortcuts_project_only_where_the_shape_changes():
    model = ResNet18(3, 10, nf=8)
    projections = [name for name, m in model.named_modules() if name.endswith("shortcut") and len(m) > 0]
    assert projections == ["layer2.0.shortcut", "layer3.0.shortcut", "layer4.0.shortcut"]
    assert model.linear.in_features == 64


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        make_model("resnet50", (3, 32, 32), 10)


def test_user_model_from_package_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        from torch import nn

        def linear(n_classes):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(n_classes))

        def not_a_model(input_shape, n_classes):
            return "a string"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = make_model("my_models:linear", (3, 4, 4), 7)
    assert model(torch.randn(2, 3, 4, 4)).shape == (2, 7)
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        make_model("my_models:not_a_model", (3, 4, 4), 7)
    with pytest.raises(ValueError, match="no attribute"):
        make_model("my_models:missing", (3, 4, 4), 7)
    with pytest.raises(ValueError, match="cannot import"):
        make_model("no_such_package_xyz:f", (3, 4, 4), 7)
    sys.modules.pop("my_models", None)
    assert isinstance(make_model("torch.nn:Identity", (1,), 1), nn.Identity)
