"""Measure how much an int8 network loses, layer by layer, against the float network.

Scale-free on purpose: the error of a layer is measured after the best single rescaling of
its integer outputs onto the float ones, so the report needs no knowledge of how the
scales were chosen, only the integers that came out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .models import LAYER_NAMES
from .profiling import profile_activations


@dataclass(frozen=True)
class LayerPrecision:
    """How faithfully one layer's int8 outputs follow the float outputs.

    saturated: share of outputs at -128 or 127 (the clamp cut them).
    collapsed: share of outputs that are 0 where the float output is not (rounded away).
    sqnr_db: signal-to-quantization-noise ratio in dB after the best rescaling; higher is
        better, each bit of precision adds about 6 dB.
    """

    saturated: float
    collapsed: float
    sqnr_db: float


def layer_outputs(model: nn.Module, loader: DataLoader, max_samples: int = 400) -> dict[str, np.ndarray]:
    """What each layer passes on, for the first ``max_samples`` images of ``loader``.

    Same keys as ``profile_activations`` for conv1 to fc2 (the next layer's input, after ReLU
    and pooling); ``"fc3"`` is the network's final output (for an int8 network, the
    requantized logits rather than the raw accumulator).
    """
    outputs: list[np.ndarray] = []
    handle = model.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().float().numpy().copy()))
    try:
        recorded = profile_activations(model, loader, max_samples=max_samples)
    finally:
        handle.remove()
    recorded["fc3"] = np.concatenate(outputs)
    return {name: recorded[name] for name in LAYER_NAMES}


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """SQNR of ``approximation`` against ``reference`` in dB, after the least-squares rescaling."""
    ref = reference.astype(np.float64).ravel()
    approx = approximation.astype(np.float64).ravel()
    power = float(np.dot(ref, ref))
    norm = float(np.dot(approx, approx))
    fitted = approx * (float(np.dot(ref, approx)) / norm) if norm > 0 else np.zeros_like(approx)
    noise = float(np.sum((ref - fitted) ** 2))
    if power == 0:
        return float("inf") if noise == 0 else float("-inf")
    return float("inf") if noise == 0 else 10.0 * np.log10(power / noise)


def precision_report(
    int8_outputs: dict[str, np.ndarray], float_outputs: dict[str, np.ndarray]
) -> dict[str, LayerPrecision]:
    """Per layer: saturated and collapsed shares of the int8 outputs, and their SQNR against float."""
    report = {}
    for name in LAYER_NAMES:
        q, f = int8_outputs[name], float_outputs[name]
        if q.shape != f.shape:
            raise ValueError(f"{name}: int8 outputs have shape {q.shape}, float outputs {f.shape}")
        report[name] = LayerPrecision(
            saturated=float(np.mean((q >= 127) | (q <= -128))),
            collapsed=float(np.mean((q == 0) & (f != 0))),
            sqnr_db=sqnr_db(f, q),
        )
    return report


def quantization_mse(weights: torch.Tensor, dequantized: torch.Tensor) -> float:
    """Mean squared error between float weights and their int8 reconstruction (q * s)."""
    return float(torch.mean((weights.detach().double() - dequantized.detach().double()) ** 2))


#: The largest |product| of one int8 weight and one int8 activation: symmetric weight scales
#: keep weights within ±127, while activations reach -128.
LARGEST_PRODUCT = 127 * 128
INT16_MAX = 2**15 - 1
INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class AccumulatorWidth:
    """How large one layer's integer accumulator can get, and how large it got.

    fan_in: int8 products summed into each output (in_channels x kernel area, or in_features).
    bound: fan_in x 127 x 128, the largest |sum| any inputs could give.
    observed: the largest |accumulator| seen on the images measured.
    """

    fan_in: int
    bound: int
    observed: float

    @classmethod
    def measured(cls, fan_in: int, observed: float) -> AccumulatorWidth:
        """The width of a layer summing ``fan_in`` products, whose largest |accumulator| seen was ``observed``."""
        return cls(fan_in, fan_in * LARGEST_PRODUCT, float(observed))


def accumulator_widths(int8_net: nn.Module, loader: DataLoader, max_samples: int = 400) -> dict[str, AccumulatorWidth]:
    """Per layer of ``int8_net``, the worst-case and the observed size of its integer accumulator.

    ``int8_net`` must feed int8 values (integers in float32 tensors) to layers holding int8
    weights; what each layer module returns before requantization is then its accumulator.
    """
    observed = dict.fromkeys(LAYER_NAMES, 0.0)

    def record(name):
        def hook(_module, _inputs, output):
            observed[name] = max(observed[name], float(output.detach().abs().max()))

        return hook

    handles = [getattr(int8_net, name).register_forward_hook(record(name)) for name in LAYER_NAMES]
    try:
        profile_activations(int8_net, loader, max_samples=max_samples)
    finally:
        for handle in handles:
            handle.remove()
    widths = {}
    for name in LAYER_NAMES:
        fan_in = getattr(int8_net, name).weight[0].numel()
        widths[name] = AccumulatorWidth.measured(fan_in, observed[name])
    return widths


def logit_error(int8_net: nn.Module, float_net: nn.Module, loader: DataLoader, logit_scale: float) -> float:
    """Mean |int8 logits x ``logit_scale`` - float logits| over ``loader``, in the float logits' units.

    ``logit_scale`` is the float value of one step of the int8 logits.
    """
    total, count = 0.0, 0
    with torch.no_grad():
        for images, _ in loader:
            difference = int8_net(images).double() * logit_scale - float_net(images).double()
            total += float(difference.abs().sum())
            count += difference.numel()
    return total / count
