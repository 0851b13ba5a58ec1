"""Accuracy and mean IoU over batches, for plain modules and super networks under a mask."""
import pytest
import torch
from torch import nn

from bsnet.train import accuracy, mean_iou


class OneHot(nn.Module):
    """Predicts the class stored in the first input channel (rounded); checks it is called in eval mode."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes
        self.modes: list[bool] = []

    def forward(self, x, mask=None):
        self.modes.append(self.training)
        cls = x[:, 0].round().long() + (0 if mask is None else int(mask.sum()))
        return nn.functional.one_hot(cls.clamp(0, self.classes - 1), self.classes).movedim(-1, 1).float()


def test_accuracy_over_batches_in_eval_mode_then_restored():
    model = OneHot(3).train()
    x = torch.tensor([0.0, 1.0, 2.0, 2.0]).view(4, 1)
    y = torch.tensor([0, 1, 1, 2])
    data = [(x[:3], y[:3]), (x[3:], y[3:])]
    assert accuracy(model, data) == pytest.approx(3 / 4)
    assert model.modes == [False, False] and model.training
    # a super network's mask is passed to its forward: here it shifts every prediction by one class
    assert accuracy(model, data, mask=torch.ones(1)) == pytest.approx(1 / 4)


def test_mean_iou_counts_only_classes_present():
    model = OneHot(3)
    labels = torch.tensor([[[0, 0], [1, 1]]])  # class 2 absent from labels and predictions: not averaged
    assert mean_iou(model, [(labels.float().unsqueeze(1), labels)], 3) == pytest.approx(1.0)
    wrong = torch.zeros(1, 1, 2, 2)  # predicts background everywhere: IoU 2/4 for class 0, 0 for class 1
    assert mean_iou(model, [(wrong, labels)], 3) == pytest.approx(0.25)
