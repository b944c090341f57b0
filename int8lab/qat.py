"""Notebook 7's loops around the student's quantization-aware training: data, optimiser, evaluation, timing.

The quantizers, the BatchNorm folding and the training step are the student's, passed in: this module holds no
reference answer to a graded function. What it does is the bookkeeping every run shares: the same batches in the
same order for a seed, an optimiser over every parameter (the learned step sizes included), accuracies on the
test images, and the seconds each run took.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .data import load_data
from .models import Net
from .training import shifted


@dataclass
class QATRun:
    """What one training run left: the mean loss of each epoch, the accuracy after each epoch (when asked for),
    and its wall-clock seconds (the evaluations left out)."""

    losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train_qat(
    model: nn.Module,
    step: Callable,
    epochs: int,
    learning_rate: float = 1e-3,
    seed: int = 0,
    batch_size: int = 32,
    max_shift: int = 2,
    dataset: str | None = None,
    evaluation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> QATRun:
    """Train ``model`` for ``epochs`` passes over the training images, one ``step`` per batch.

    Args:
        model: the network to train (its parameters, learned step sizes included, go to one Adam optimiser).
        step: ``step(model, images, labels, optimizer) -> float`` loss of the batch (the student's ``qat_step``);
            images float32 (B, C, 32, 32), labels int64 (B,).
        epochs: passes over the training set.
        learning_rate: Adam's rate at the start; it decays to 0 along a cosine over the run.
        seed: fixes the order of the batches and their random shifts (as the float training does).
        batch_size, max_shift: as ``TrainSettings``; dataset: as ``load_data``.
        evaluation: (images, labels) to measure the accuracy on after each epoch (``accuracy_on``), or None.
    """
    torch.manual_seed(seed)
    train_loader, _ = load_data(dataset, batch_size=batch_size)
    train_loader.generator.manual_seed(seed)
    shifts = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(train_loader)))
    run = QATRun()
    for _ in range(epochs):
        started = time.perf_counter()
        losses = []
        for images, labels in train_loader:
            losses.append(float(step(model, shifted(images, max_shift, shifts), labels, optimizer)))
            schedule.step()
        run.seconds += time.perf_counter() - started
        run.losses.append(float(np.mean(losses)))
        if evaluation is not None:
            run.accuracies.append(accuracy_on(model, *evaluation))
    model.eval()
    return run


def evaluation_set(dataset: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every test image and label in one pair of tensors: float32 (N, C, 32, 32) and int64 (N,)."""
    _, test_loader = load_data(dataset)
    images, labels = (torch.cat(parts) for parts in zip(*test_loader, strict=True))
    return images, labels


def correct_on(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Whether ``model`` (in eval mode, as its forward is: fake quantization stays wherever forward puts it)
    classifies each image right: bool array (N,). The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return (model(images).argmax(dim=1) == labels).numpy()
    finally:
        model.train(was_training)


def accuracy_on(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent of ``model`` on ``images`` (see ``correct_on``)."""
    return 100.0 * float(correct_on(model, images, labels).mean())


def folded_net(net_bn: nn.Module, fold: Callable) -> Net:
    """A ``Net`` whose convolutions carry ``net_bn``'s BatchNorms, folded by ``fold(conv, bn) -> (weight, bias)``
    (the student's ``fold_batchnorm``): conv1 and conv2 get a bias, the linear layers are copied as they are."""
    net = Net(net_bn.in_channels)
    for name, bn_name in (("conv1", "bn1"), ("conv2", "bn2")):
        conv = getattr(net_bn, name)
        weight, bias = fold(conv, getattr(net_bn, bn_name))
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, bias=True)
        folded.weight.data.copy_(weight.detach())
        folded.bias.data.copy_(bias.detach())
        setattr(net, name, folded)
    for name in ("fc1", "fc2", "fc3"):
        setattr(net, name, copy.deepcopy(getattr(net_bn, name)))
    return net.eval()


def seed_summary(values: list[float]) -> tuple[float, float, float]:
    """(mean, lowest, highest) of one measure over several seeds."""
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))
