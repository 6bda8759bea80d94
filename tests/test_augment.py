"""Tests for ``ckd.data.augmentation``: normalisation, the batched crop + flip, and its plugin."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.functional as TF

from ckd.data.augmentation import CIFAR10_NORMALIZATION, CropFlip, Normalization, random_crop_flip
from ckd.engines.augmentation import AugmentationPlugin


def position_images(b: int, c: int, h: int, w: int) -> torch.Tensor:
    """Images whose pixel ``(c, i, j)`` holds ``1 + i·w + j + 1000·c``: every pixel says where it came from."""
    grid = 1 + torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w) + 1000 * torch.arange(c).view(1, c, 1, 1)
    return grid.expand(b, c, h, w).clone()


def offsets_and_flips(out: torch.Tensor, padding: int, w: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Recover each crop's (top, left) offset and flip from position images (fill 0),
    using the centre pixel of the output, which always comes from the image."""
    h = out.shape[2]
    centre = out[:, 0, h // 2, w // 2].long() - 1
    mirror = out[:, 0, h // 2, w // 2 + 1].long() - 1
    flipped = mirror < centre  # the column to the right comes from further left
    src_row, src_col = centre // w, centre % w
    top = src_row - h // 2 + padding
    col_in_window = torch.where(flipped, w - 1 - w // 2, torch.full_like(centre, w // 2))
    left = src_col - col_in_window + padding
    return top, left, flipped


def test_normalization_values_and_black():
    norm = Normalization(mean=(0.5, 0.25), std=(0.5, 0.25))
    x = torch.tensor([[[0.0, 1.0]], [[0.5, 0.25]]])  # (C=2, H=1, W=2)
    assert torch.allclose(norm(x.clone()), torch.tensor([[[-1.0, 1.0]], [[1.0, 0.0]]]))
    assert norm.black == (-1.0, -1.0)
    assert CIFAR10_NORMALIZATION.black[0] == pytest.approx(-0.4914 / 0.2470)


@pytest.mark.parametrize("kwargs, field", [({"mean": (0.5,), "std": (0.0,)}, "std"), ({"mean": (0.5, 0.5), "std": (1.0,)}, "mean")])
def test_normalization_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        Normalization(**kwargs)


def test_crop_flip_matches_torchvision_for_the_drawn_offsets():
    x = torch.rand(64, 3, 8, 8)
    fill = (-1.0, -2.0, -3.0)
    out = random_crop_flip(x, 2, fill, generator=torch.Generator().manual_seed(0))
    top, left, flipped = offsets_and_flips(
        random_crop_flip(position_images(64, 3, 8, 8), 2, (0.0,), generator=torch.Generator().manual_seed(0)), 2, 8
    )
    for k in range(64):
        padded = torch.cat([TF.pad(x[k, c : c + 1], 2, fill=fill[c]) for c in range(3)])
        expected = TF.crop(padded, int(top[k]), int(left[k]), 8, 8)
        if flipped[k]:
            expected = TF.hflip(expected)
        assert torch.equal(out[k], expected), k


def test_crop_offsets_are_uniform_and_half_the_images_flip():
    n, padding = 20000, 4
    out = random_crop_flip(position_images(n, 1, 32, 32), padding, generator=torch.Generator().manual_seed(1))
    top, left, flipped = offsets_and_flips(out, padding, 32)
    for offsets in (top, left):
        counts = torch.bincount(offsets, minlength=2 * padding + 1)
        assert counts.numel() == 2 * padding + 1  # nothing outside [0, 2·padding]
        # each of the 9 offsets: 1/9 of the draws, within 4 binomial standard deviations
        assert ((counts.float() / n - 1 / 9).abs() < 4 * (1 / 9 * 8 / 9 / n) ** 0.5).all(), counts
    assert abs(flipped.float().mean().item() - 0.5) < 4 * (0.25 / n) ** 0.5
    # top and left are drawn independently: the joint frequency of (0, 0) is about 1/81
    assert abs(((top == 0) & (left == 0)).float().mean().item() - 1 / 81) < 4 * (1 / 81 / n) ** 0.5


def test_padding_is_the_fill_value_and_zero_padding_only_flips():
    x = torch.ones(500, 2, 4, 4)
    out = random_crop_flip(x, 1, (-5.0, 7.0), flip_probability=0.0, generator=torch.Generator().manual_seed(0))
    assert set(out[:, 0].unique().tolist()) == {-5.0, 1.0} and set(out[:, 1].unique().tolist()) == {7.0, 1.0}
    images = position_images(200, 1, 4, 4)
    out = random_crop_flip(images, 0, generator=torch.Generator().manual_seed(0))
    flipped = ~(out == images).flatten(1).all(1)
    assert torch.equal(out[flipped], images[flipped].flip(-1))
    assert 0 < flipped.sum() < 200


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_crop_flip(torch.zeros(3, 4, 4), 1)
    with pytest.raises(ValueError, match="fill"):
        random_crop_flip(torch.zeros(1, 3, 4, 4), 1, (0.0, 1.0))
    with pytest.raises(ValueError, match="padding"):
        CropFlip(padding=-1)
    with pytest.raises(ValueError, match="flip_probability"):
        CropFlip(flip_probability=1.5)


class _Strategy:
    def __init__(self, x: torch.Tensor):
        self.mbatch = [x, torch.zeros(len(x), dtype=torch.long), torch.zeros(len(x), dtype=torch.long)]
        self.is_training = True
        self.seen: list[torch.Tensor] = []

    def forward(self):
        self.seen.append(self.mbatch[0])
        return self.mbatch[0].sum()


def test_plugin_augments_every_row_the_model_sees_and_only_in_training():
    torch.manual_seed(0)
    x = position_images(40, 1, 6, 6)
    strategy = _Strategy(x.clone())
    plugin = AugmentationPlugin(CropFlip(padding=2))
    plugin.before_training(strategy)
    plugin.before_training(strategy)  # wrapped once, however many experiences
    strategy.forward()
    seen = strategy.seen[-1]
    changed = ~(seen == x).flatten(1).all(1)
    assert seen.shape == x.shape and strategy.mbatch[0] is seen
    assert changed.float().mean() > 0.8  # only (offset 2, 2, no flip) leaves an image as it was: 1/50
    strategy.mbatch[0], strategy.is_training = x.clone(), False
    strategy.forward()
    assert torch.equal(strategy.seen[-1], x) and len(strategy.seen) == 2


def test_teacher_targets_use_the_augmented_views_of_the_replayed_rows(tmp_path):
    """With kd-replay, the rows the KD plugin appends are augmented before the forward
    pass, and the teacher is given exactly the views the student saw."""
    from torch import nn

    from archives import write_cifar10
    from ckd.benchmarking.methods import TrainSettings, make_strategy, resolve_method_args
    from ckd.data.streams import make_stream
    from ckd.distillation.plugin import KDReplayPlugin

    write_cifar10(tmp_path, train_per_class=8, test_per_class=1)
    stream = make_stream("split-cifar10", data_root=tmp_path, checksum=False, n_experiences=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0]) if module.training else None)
    args = resolve_method_args("kd-replay", {"mem_size": 40, "replay_batch_size": 6})
    strategy = make_strategy(
        "kd-replay", model, TrainSettings(0.01, 8, 1, 100, "cpu"), args, seed=0,
        extra_plugins=[AugmentationPlugin(stream.augmentation)],
    )
    kd = next(p for p in strategy.plugins if isinstance(p, KDReplayPlugin))
    given: list[tuple[torch.Tensor, torch.Tensor]] = []
    soft_targets = kd.teacher_part.soft_targets
    kd.teacher_part.soft_targets = lambda sample, x: (given.append((sample.x, x)), soft_targets(sample, x))[1]
    for experience in stream.benchmark.train_stream[:2]:
        strategy.train(experience)
    # the teacher exists from experience 1 on: its 16 images, two steps of 8 + 6 replayed rows
    replayed = [batch[8:] for batch in seen[2:] if batch.shape[0] == 8 + 6]
    assert len(given) == len(replayed) == 2
    for (stored, teacher_x), student_x in zip(given, replayed):
        assert torch.equal(teacher_x, student_x)
        assert not torch.equal(teacher_x, stored)  # an augmented view, not the stored image
