"""Notebook 5's experiments: a network quantized to b bits by a recipe, built from the student's functions.

The network is *simulated*: every quantized tensor is replaced by ``q * s`` (its dequantized
value) and the layers run in float. By the derivations of notebooks 2 and 3 this gives the
same int8 outputs as the integer chain, while letting one forward pass try any bit width,
clipping method and sign without building integer layers for each.

The quantizers are passed in, never defined here: this package holds no reference answer to a
graded function (see ``SimulatedQuantization``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .models import LAYER_NAMES

#: The clipping methods of notebook 5, in the order its tables list them.
METHODS = ("max", "percentile", "sigma", "mse")
#: Which layer's quantization covers which recorded activation (see ``profile_activations``).
_OUTPUTS = {"conv1": ("input", "conv1"), "conv2": ("conv2",), "fc1": ("fc1",), "fc2": ("fc2",), "fc3": ("fc3",)}
#: Activations that can be negative: the input pixels and the logits stay signed whatever the recipe.
ALWAYS_SIGNED = ("input", "fc3")


def largest_level(bits: int, signed: bool) -> int:
    """The largest integer a b-bit code holds: 2**(bits-1) - 1 signed, 2**bits - 1 unsigned.

    A clipping threshold T maps onto it: the scale is ``T / largest_level(bits, signed)``.
    """
    return 2 ** (bits - 1) - 1 if signed else 2**bits - 1


@dataclass(frozen=True)
class Recipe:
    """How to quantize the network.

    Attributes:
        weight_bits: bits of every quantized layer's weights; None keeps them float.
        activation_bits: bits of the input, of every quantized layer's output and of the logits; None keeps them float.
        method: the clipping method of ``clip_threshold`` for per-tensor weight scales and for activations.
        per_channel: one weight scale per output channel (max of the channel) instead of one per tensor.
        unsigned: the outputs of ReLU layers (conv1 to fc2) use unsigned codes [0, 2**bits - 1].
        layers: the layers quantized; a layer covers its weights and its output (conv1 also the input).
    """

    weight_bits: int | None = None
    activation_bits: int | None = None
    method: str = "max"
    per_channel: bool = False
    unsigned: bool = False
    layers: tuple[str, ...] = LAYER_NAMES

    def label(self) -> str:
        scales = "per-channel" if self.per_channel else "per-tensor"
        return f"{self.method}, {scales}, {'unsigned' if self.unsigned else 'signed'}"


class SimulatedQuantization:
    """A float network and its calibration data, quantized to any ``Recipe`` with the given functions.

    Args:
        net: a trained ``Net`` (no bias), or one with float biases (``int8lab.qat.folded_net``).
        calibration: ``profile_activations(net, ...)``: float32 arrays keyed input, conv1, ..., fc3.
        quantize: ``quantize(x, scale, bits, signed) -> float32 tensor of integer codes``.
        clip_threshold: ``clip_threshold(values, method, bits, signed) -> float`` threshold T >= 0.
        quantized_weights_per_channel: ``(weights, bits) -> (codes, scales)``, scales of shape (out_channels,).
        images, labels: the evaluation set, float32 (N, C, 32, 32) and int64 (N,).

    Thresholds, weights and accuracies are computed once per recipe and kept: the sweeps of the
    notebook ask for the same ones many times. With ``persistent``, which images each recipe gets
    right is also kept on disk (``_ResultStore``), so that running the notebook again with the same
    functions and network costs nothing; a changed function gets results of its own. A threshold of 0
    (an all-zero tensor) gives a scale of 1.0, which quantizes zeros exactly. The "mse" search runs on
    ``mse_sample(values)``.
    """

    def __init__(
        self,
        net,
        calibration: dict[str, np.ndarray],
        quantize: Callable,
        clip_threshold: Callable,
        quantized_weights_per_channel: Callable,
        images: torch.Tensor,
        labels: torch.Tensor,
        persistent: bool = False,
    ):
        self.net, self.calibration = net, calibration
        self.quantize, self.clip_threshold = quantize, clip_threshold
        self.per_channel_weights = quantized_weights_per_channel
        self.images, self.labels = images, labels
        self._thresholds: dict = {}
        self._weights: dict = {}
        self._correct: dict[Recipe, np.ndarray] = {}
        self._store = _ResultStore(self) if persistent else None

    def correct(self, recipe: Recipe) -> np.ndarray:
        """Whether each evaluation image is classified right under ``recipe``: bool array (N,)."""
        if recipe not in self._correct:
            stored = self._store.get(recipe) if self._store else None
            if stored is None or stored.shape != self.labels.shape:
                with torch.no_grad():
                    logits = self.logits(recipe)
                stored = (logits.argmax(dim=1) == self.labels).numpy()
                if self._store:
                    self._store.put(recipe, stored)
            self._correct[recipe] = stored
        return self._correct[recipe]

    def accuracy(self, recipe: Recipe) -> float:
        """Top-1 accuracy in percent of the network quantized by ``recipe`` on the evaluation set."""
        return 100.0 * float(self.correct(recipe).mean())

    def difference_interval(
        self, recipe: Recipe, baseline: Recipe, level: float = 0.95, resamples: int = 2000, seed: int = 0
    ) -> tuple[float, float]:
        """A paired bootstrap interval, in points, of ``accuracy(recipe) - accuracy(baseline)``.

        The evaluation images are resampled with replacement (the same images for both recipes), so the
        interval says how much of the difference one set of test images can tell apart, not how it would
        vary with another training run.
        """
        return difference_interval(self.correct(recipe), self.correct(baseline), level, resamples, seed)

    def float_accuracy(self) -> float:
        return self.accuracy(Recipe())

    def logits(self, recipe: Recipe) -> torch.Tensor:
        """The float32 logits (N, 10) of the evaluation images through the quantized network."""
        weights = {name: self.weights(name, recipe) for name in LAYER_NAMES}
        x = self._activation(self.images, "input", recipe)
        bias = {name: self._bias(name) for name in LAYER_NAMES}
        x = self._activation(F.max_pool2d(F.relu(F.conv2d(x, weights["conv1"], bias["conv1"])), 2), "conv1", recipe)
        x = torch.flatten(F.max_pool2d(F.relu(F.conv2d(x, weights["conv2"], bias["conv2"])), 2), 1)
        x = self._activation(x, "conv2", recipe)
        x = self._activation(F.relu(F.linear(x, weights["fc1"], bias["fc1"])), "fc1", recipe)
        x = self._activation(F.relu(F.linear(x, weights["fc2"], bias["fc2"])), "fc2", recipe)
        return self._activation(F.linear(x, weights["fc3"], bias["fc3"]), "fc3", recipe)

    def _bias(self, name: str) -> torch.Tensor | None:
        # A float bias (a BatchNorm folded into a convolution, notebook 7) is added to the accumulator unquantized:
        # as an int32 on the accumulator's scale it would lose nothing measurable. Net has none.
        bias = getattr(self.net, name).bias
        return None if bias is None else bias.detach()

    def weights(self, name: str, recipe: Recipe) -> torch.Tensor:
        """Layer ``name``'s weights as the recipe leaves them: float, or dequantized codes ``q * s``."""
        weights = getattr(self.net, name).weight.detach()
        bits = recipe.weight_bits
        if bits is None or name not in recipe.layers:
            return weights
        key = (name, bits, "per-channel" if recipe.per_channel else recipe.method)
        if key not in self._weights:
            if recipe.per_channel:
                codes, scales = self.per_channel_weights(weights, bits)
                scales = torch.as_tensor(scales, dtype=torch.float32).reshape(-1, *([1] * (weights.dim() - 1)))
            else:
                scales = self._scale(weights.numpy(), ("weights", name), recipe.method, bits, True)
                codes = self.quantize(weights, scales, bits, True)
            self._weights[key] = torch.as_tensor(codes, dtype=torch.float32) * scales
        return self._weights[key]

    def _activation(self, x: torch.Tensor, key: str, recipe: Recipe) -> torch.Tensor:
        bits = recipe.activation_bits
        owner = next(name for name, keys in _OUTPUTS.items() if key in keys)
        if bits is None or owner not in recipe.layers:
            return x
        signed = key in ALWAYS_SIGNED or not recipe.unsigned
        scale = self._scale(self.calibration[key], ("activations", key), recipe.method, bits, signed)
        return torch.as_tensor(self.quantize(x, scale, bits, signed), dtype=torch.float32) * scale

    def _scale(self, values, what: tuple[str, str], method: str, bits: int, signed: bool) -> float:
        # Only the "mse" search depends on the codes; the statistics are computed once per tensor.
        key = (*what, method) + ((bits, signed) if method == "mse" else ())
        if key not in self._thresholds:
            sample = mse_sample(values) if method == "mse" else values
            self._thresholds[key] = float(self.clip_threshold(sample, method, bits, signed))
        threshold = self._thresholds[key]
        return threshold / largest_level(bits, signed) if threshold > 0 else 1.0

    def threshold(self, key: str, method: str, bits: int, signed: bool) -> float:
        """The clipping threshold of activation ``key`` (as ``clip_threshold`` gives it), for plots."""
        scale = self._scale(self.calibration[key], ("activations", key), method, bits, signed)
        return scale * largest_level(bits, signed)


def difference_interval(
    correct: np.ndarray, baseline_correct: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """A paired bootstrap interval, in points, of the accuracy of ``correct`` minus that of ``baseline_correct``.

    Args:
        correct, baseline_correct: bool arrays (N,), whether each of the same N evaluation images is classified
            right by the two networks compared.

    The images are resampled with replacement, the same ones for both, so the interval says how much of the
    difference one set of test images can tell apart, not how it would vary with another training run.
    """
    ours, theirs = np.asarray(correct, dtype=np.float64), np.asarray(baseline_correct, dtype=np.float64)
    if ours.shape != theirs.shape or ours.ndim != 1:
        raise ValueError(f"two bool arrays of one shape (N,) are needed, got {ours.shape} and {theirs.shape}")
    picks = np.random.default_rng(seed).integers(0, len(ours), size=(resamples, len(ours)))
    differences = 100.0 * (ours[picks].mean(axis=1) - theirs[picks].mean(axis=1))
    low, high = np.percentile(differences, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


#: The "mse" search quantizes its values once per candidate: a large activation is searched on a sample.
MSE_SAMPLE_SIZE = 1 << 14


def mse_sample(values) -> np.ndarray:
    """At most ``MSE_SAMPLE_SIZE`` + 1 of ``values``: every k-th one, plus the one of largest magnitude.

    The largest magnitude is kept so that the sample has the same max|x|, hence the same grid of
    candidate thresholds, as the whole tensor; the rest is an even, deterministic subsample.
    """
    flat = np.asarray(values).ravel()
    if flat.size <= MSE_SAMPLE_SIZE:
        return flat
    stride = -(-flat.size // MSE_SAMPLE_SIZE)
    return np.concatenate([flat[::stride], flat[[int(np.argmax(np.abs(flat)))]]])


def smallest_safe_bits(accuracies: dict[int, float], reference: float, tolerance: float = 1.0) -> int | None:
    """The smallest bit width from which no wider one loses more than ``tolerance`` points against ``reference``.

    Args:
        accuracies: ``{bits: accuracy in percent}``.
    Returns None when even the widest bit width loses more.
    """
    safe = None
    for bits in sorted(accuracies, reverse=True):
        if reference - accuracies[bits] > tolerance:
            break
        safe = bits
    return safe


class _ResultStore:
    """Which images each recipe got right, on disk under the model cache, for one set of inputs.

    The file's name is a hash of everything the results depend on: the code of the three functions
    (and of what they were compiled from), the network's weights, the calibration data and the
    evaluation images. A store that cannot be read or written (a read-only cache, as in grading) is
    simply not used.
    """

    def __init__(self, lab: SimulatedQuantization):
        import hashlib
        import marshal

        from .data import cache_dir

        digest = hashlib.sha256()
        for function in (lab.quantize, lab.clip_threshold, lab.per_channel_weights):
            code = getattr(function, "__code__", None)
            digest.update(marshal.dumps(code) if code is not None else repr(function).encode())
        for tensor in lab.net.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
        for name in sorted(lab.calibration):
            digest.update(np.ascontiguousarray(lab.calibration[name]).tobytes())
        digest.update(lab.images.numpy().tobytes() + lab.labels.numpy().tobytes())
        self.path = cache_dir() / "simulated" / f"{digest.hexdigest()[:32]}.npz"
        self.saved: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path) as stored:
                self.saved = {key: stored[key] for key in stored.files}
        except (OSError, ValueError):
            pass

    def get(self, recipe: Recipe) -> np.ndarray | None:
        return self.saved.get(repr(recipe))

    def put(self, recipe: Recipe, correct: np.ndarray) -> None:
        self.saved[repr(recipe)] = correct
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.npz")
            np.savez(partial, **self.saved)
            os.replace(partial, self.path)  # whole or not at all: another kernel may read it meanwhile
        except OSError:
            pass
