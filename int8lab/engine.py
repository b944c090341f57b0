"""A production int8 engine to compare with: PyTorch's eager-mode quantization on the x86 kernels.

Of the engines that run here without a download, ``torch.ao.quantization`` in eager mode is the
closest to this lab's scheme: per-tensor symmetric int8 weights, scales from the min and max
of 400 calibration images, an int32 bias, int32 accumulators. What differs: its activations
are unsigned ``quint8`` with a zero point (affine, not symmetric), and the x86 (fbgemm) kernels
requantize with their own output pipeline.
"""

from __future__ import annotations

import contextlib
import copy
import io
import re
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

#: PyTorch 2.13 announces that torch.ao.quantization moves to the torchao package, and that
#: quantized tensor types will go. Both still work here; these are the only warnings silenced.
_EXPECTED_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"),
)
DEPRECATION_NOTE = (
    "PyTorch 2.13 marks torch.ao.quantization as deprecated in favour of the torchao package; it still "
    "runs the x86 int8 kernels used here, and its two deprecation warnings are silenced on purpose."
)


class _EagerNet(nn.Module):
    """``NetWithBias`` rewritten for eager-mode quantization: quant/dequant stubs, ReLUs as modules."""

    def __init__(self, net: nn.Module):
        super().__init__()
        import torch.ao.quantization as tq

        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.conv1, self.conv2 = net.conv1, net.conv2
        self.fc1, self.fc2, self.fc3 = net.fc1, net.fc2, net.fc3
        self.relu1, self.relu2, self.relu3, self.relu4 = nn.ReLU(), nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant(x)
        x = self.pool(self.relu1(self.conv1(x)))
        x = self.pool(self.relu2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.dequant(self.fc3(x))


@contextlib.contextmanager
def _quiet():
    """The two expected deprecation warnings silenced, and only those."""
    with warnings.catch_warnings():
        for category, message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def torch_int8_model(float_net: nn.Module, calibration: DataLoader, max_samples: int = 400) -> nn.Module:
    """Quantize a copy of ``float_net`` with PyTorch's eager mode on the x86 engine.

    Args:
        float_net: a trained ``Net`` or ``NetWithBias`` (float32), left unchanged.
        calibration: images to observe the activations' ranges on (the first ``max_samples``).

    Returns:
        A module taking float32 images (N, C, 32, 32) and returning float32 logits (N, 10), which
        inside runs quint8 activations, qint8 weights and int32 accumulators.
    """
    import torch.ao.quantization as tq

    torch.backends.quantized.engine = "x86"
    model = _EagerNet(copy.deepcopy(float_net)).eval()
    model.qconfig = tq.QConfig(
        activation=tq.MinMaxObserver.with_args(dtype=torch.quint8, qscheme=torch.per_tensor_affine),
        weight=tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric),
    )
    pairs = [["conv1", "relu1"], ["conv2", "relu2"], ["fc1", "relu3"], ["fc2", "relu4"]]
    with _quiet():
        model = tq.fuse_modules(model, pairs)
        tq.prepare(model, inplace=True)
        seen = 0
        with torch.no_grad():
            for images, _ in calibration:
                model(images[: max_samples - seen])
                seen += min(len(images), max_samples - seen)
                if seen >= max_samples:
                    break
        tq.convert(model, inplace=True)
    return _Quiet(model)


class _Quiet(nn.Module):
    """Runs the converted engine model with its expected deprecation warnings silenced."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _quiet():
            return self.model(x)


def serialized_bytes(state: dict) -> int:
    """Size in bytes of ``state`` (a state dict, or any dict of tensors and numbers) as ``torch.save`` writes it."""
    buffer = io.BytesIO()
    with _quiet():
        torch.save(state, buffer)
    return len(buffer.getvalue())


def latency_per_image(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, repeats: int = 5) -> float:
    """Seconds per image of ``run(images)``: the best of ``repeats`` timed calls, after one warm-up call."""
    with torch.no_grad():
        run(images)
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            run(images)
            best = min(best, time.perf_counter() - started)
    return best / len(images)


def unexpected_warnings(records) -> list[str]:
    """The messages among caught warning ``records`` that are not the two expected deprecations."""
    return [
        str(r.message)
        for r in records
        if not any(issubclass(r.category, c) and re.search(m, str(r.message)) for c, m in _EXPECTED_WARNINGS)
    ]
