import pytest
import torch
from torch import nn

from ckd.distillation.parts.weight_aligning import align_weights


def test_weight_aligning_scales_the_new_rows_to_the_old_rows_mean_norm():
    head = nn.Linear(2, 4)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 2.0]]))  # norms 5, 1, 10, 2
        head.bias.copy_(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    gamma = align_weights(head, old=[0, 1], new=[2, 3])
    assert gamma == pytest.approx(3.0 / 6.0)  # mean old norm 3, mean new norm 6
    assert head.weight.norm(dim=1).tolist() == pytest.approx([5.0, 1.0, 5.0, 1.0])
    assert head.bias.tolist() == pytest.approx([1.0, 1.0, 0.5, 0.5])
    assert align_weights(head, old=[], new=[0]) == 1.0  # first experience: nothing to align to
