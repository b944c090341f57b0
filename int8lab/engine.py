"""A production int8 engine to compare with: PyTorch's eager-mode quantization.

Of the engines that run here without a download, ``torch.ao.quantization`` in eager mode is the
closest to this lab's scheme: per-tensor symmetric int8 weights, scales from the min and max
of 400 calibration images, int32 accumulators. What differs: its activations are unsigned
``quint8`` with a zero point (affine, not symmetric), its bias stays float, and its kernels
requantize with a float multiplier.

Which kernels run depends on the machine: ``choose_engine`` takes x86 (fbgemm and oneDNN) where
PyTorch has it, else qnnpack (ARM). fbgemm's AVX2 kernels multiply uint8 activations by int8
weights with ``vpmaddubsw``, which adds each *pair* of products in saturating int16 before the
int32 sum. ``pair_saturated_linear`` models that instruction, so its
effect can be measured on any machine; notebook 4.8 asks what it means for 8-bit and 7-bit
activations (``reduce_range``). ``int16_pairs`` counts, for the codes a layer really received, the
pairs it would clip and the outputs where any pairing could (notebook 6.8).
"""

from __future__ import annotations

import contextlib
import copy
import io
import platform
import re
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .memo import pure

#: PyTorch 2.13 announces that torch.ao.quantization moves to the torchao package, and that
#: quantized tensor types will go. Both still work here; these are the only warnings silenced.
_EXPECTED_WARNINGS = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"),
)
DEPRECATION_NOTE = (
    "PyTorch 2.13 marks torch.ao.quantization as deprecated in favour of the torchao package; it still "
    "runs the int8 kernels used here, and its two deprecation warnings are silenced on purpose."
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


#: Engines in the order they are preferred: x86 (fbgemm with oneDNN) on Intel and AMD CPUs, qnnpack on ARM.
ENGINE_PREFERENCE = ("x86", "fbgemm", "onednn", "qnnpack")


def choose_engine(supported: list[str] | None = None) -> str:
    """The quantized engine this machine's PyTorch has (or of ``supported``), by ``ENGINE_PREFERENCE``;
    ValueError if none."""
    supported = set(torch.backends.quantized.supported_engines if supported is None else supported)
    for engine in ENGINE_PREFERENCE:
        if engine in supported:
            return engine
    raise ValueError(f"this PyTorch build has no quantized engine (it supports {sorted(supported)})")


def cpu_features() -> str:
    """The CPU features the engine's figures depend on, e.g. ``"x86_64, AVX2 without VNNI"``."""
    machine = platform.machine() or "unknown CPU"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as info:
            line = next((line for line in info if line.startswith(("flags", "Features"))), "")
            flags = set(line.partition(":")[2].split())
    if not flags:
        return f"{machine} (features unknown)"
    if "avx2" not in flags:
        return f"{machine}, without AVX2" if machine in ("x86_64", "AMD64") else machine
    vnni = sorted(flags & {"avx512_vnni", "avx_vnni"})
    return f"{machine}, AVX2 with VNNI ({', '.join(vnni)})" if vnni else f"{machine}, AVX2 without VNNI"


@pure
def torch_int8_model(
    float_net: nn.Module,
    calibration: DataLoader,
    max_samples: int = 400,
    reduce_range: bool = True,
    engine: str | None = None,
    per_channel: bool = False,
) -> nn.Module:
    """Quantize a copy of ``float_net`` with PyTorch's eager mode.

    Args:
        float_net: a trained ``Net`` or ``NetWithBias`` (float32), left unchanged.
        calibration: images to observe the activations' ranges on (the first ``max_samples``).
        reduce_range: activations on 7 bits (codes 0..127 for the calibrated range), PyTorch's default;
            False uses all 8 bits (0..255). Either way the kernels saturate at quint8's 0 and 255: the
            range only sets the scale.
        engine: the quantized engine (``choose_engine()`` when None).
        per_channel: symmetric int8 weights with one scale per output channel (notebook 6) instead of one
            per tensor (notebook 4).

    Returns:
        A module taking float32 images (N, C, 32, 32) and returning float32 logits (N, 10), which
        inside runs quint8 activations, qint8 weights and int32 accumulators. Its ``engine``,
        ``reduce_range`` and ``per_channel`` attributes say how it was built.
    """
    import torch.ao.quantization as tq

    engine = engine or choose_engine()
    torch.backends.quantized.engine = engine
    model = _EagerNet(copy.deepcopy(float_net)).eval()
    model.qconfig = tq.QConfig(
        # reduce_range as the code range it stands for: PyTorch warns that the flag itself will go.
        activation=tq.MinMaxObserver.with_args(
            dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=127 if reduce_range else 255
        ),
        weight=(
            tq.PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
            if per_channel
            else tq.MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
        ),
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
    quiet = _Quiet(model)
    quiet.engine, quiet.reduce_range, quiet.per_channel = engine, reduce_range, per_channel
    return quiet


def layer_input_codes(engine_model: nn.Module, name: str, images: torch.Tensor) -> torch.Tensor:
    """The quint8 codes (0..255, as torch.int64) that layer ``name`` of an engine model receives for ``images``."""
    seen: list[torch.Tensor] = []
    layer = getattr(engine_model.model, name)
    handle = layer.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].int_repr().to(torch.int64)))
    try:
        with torch.no_grad():
            engine_model(images)
    finally:
        handle.remove()
    return torch.cat(seen)


def layer_weight_codes(engine_model: nn.Module, name: str) -> torch.Tensor:
    """Layer ``name``'s qint8 weight codes, as torch.int8."""
    return getattr(engine_model.model, name).weight().int_repr()


def engine_parameters(engine_model: nn.Module) -> dict:
    """Every number an engine model quantizes with, as plain tensors and floats (notebook 6 rebuilds it on integers).

    Returns ``{"input": (scale, zero_point), name: {...} for name in LAYER_NAMES}`` where each layer's dict holds
    ``weight_codes`` (torch.int8, the layer's shape), ``weight_scales`` (torch.float64, one per output channel, or
    one repeated for a per-tensor model), ``bias`` (the float32 bias, or None) and ``output`` (the scale and zero
    point of the layer's quint8 output codes, as a float and an int).
    """
    from .models import LAYER_NAMES

    model = engine_model.model
    parameters: dict = {"input": (float(model.quant.scale), int(model.quant.zero_point))}
    for name in LAYER_NAMES:
        layer = getattr(model, name)
        weight = layer.weight()
        if weight.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
            scales = weight.q_per_channel_scales().to(torch.float64)
        else:
            scales = torch.full((weight.shape[0],), weight.q_scale(), dtype=torch.float64)
        bias = layer.bias()
        parameters[name] = {
            "weight_codes": weight.int_repr(),
            "weight_scales": scales,
            "bias": None if bias is None else bias.detach().clone(),
            "output": (float(layer.scale), int(layer.zero_point)),
        }
    return parameters


def passed_on_codes(engine_model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The quint8 codes each step of an engine model passes on, as torch.uint8, for ``images``.

    ``"input"``: the codes conv1 receives (the quantized images); ``"conv1"``, ``"conv2"``, ``"fc1"``, ``"fc2"``:
    what the next layer receives (after ReLU, and pooling and flattening for the convolutions); ``"fc3"``: the
    logits' codes. One forward pass.
    """
    from .models import LAYER_NAMES

    model = engine_model.model
    seen: dict[str, torch.Tensor] = {}
    # layer -> the step whose codes it receives
    givers = {"conv1": "input", **dict(zip(LAYER_NAMES[1:], LAYER_NAMES[:-1], strict=True))}
    handles = [
        getattr(model, layer_name).register_forward_pre_hook(
            lambda module, inputs, key=givers[layer_name]: seen.__setitem__(key, inputs[0].int_repr())
        )
        for layer_name in LAYER_NAMES
    ]
    handles.append(
        model.fc3.register_forward_hook(lambda module, inputs, output: seen.__setitem__("fc3", output.int_repr()))
    )
    try:
        with torch.no_grad():
            engine_model(images)
    finally:
        for handle in handles:
            handle.remove()
    return {key: seen[key] for key in ("input", *LAYER_NAMES)}


def pair_saturated_linear(codes: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear layer's accumulators as AVX2's ``vpmaddubsw`` computes them, and how often a pair saturated.

    Args:
        codes: unsigned activation codes in [0, 255], an integer tensor (N, K).
        weight: torch.int8 weight codes (O, K).

    Returns:
        ``(accumulators, saturated)``: torch.int64 (N, O), each the sum over k of
        ``clamp(codes[k] w[k] + codes[k+1] w[k+1], -32768, 32767)`` for k = 0, 2, 4, ... (the int16 pairs,
        then an exact wide sum); and a bool tensor (N, O, K/2) of the pairs that were clipped.
    """
    x = codes.to(torch.int64)
    w = weight.to(torch.int64)
    if x.shape[1] % 2:
        x, w = torch.nn.functional.pad(x, (0, 1)), torch.nn.functional.pad(w, (0, 1))
    products = x[:, None, :] * w[None, :, :]
    pairs = products[..., 0::2] + products[..., 1::2]
    clipped = pairs.clamp(-(2**15), 2**15 - 1)
    return clipped.sum(-1), clipped != pairs


def int16_pairs(codes: torch.Tensor, weight: torch.Tensor, chunk: int = 2048) -> tuple[int, int]:
    """How a layer's sums would fare in int16 pairs on an x86 CPU without VNNI, for the codes it received.

    Args:
        codes: the layer's unsigned input codes in [0, 255]: (N, K) for a linear layer, (N, C, H, W) for a
            convolution (valid, stride 1).
        weight: its torch.int8 weight codes, (O, K) or (O, C, k, k).

    Returns:
        ``(pairs, outputs)``: ``pairs``, the neighbouring products (k, k + 1) of an output's sum whose int16 sum
        ``vpmaddubsw`` would clip, as ``pair_saturated_linear`` models it, with a convolution's inputs in fbgemm's
        (kernel row, kernel column, channel) order; ``outputs``, the outputs in which some two products of the same
        sign leave int16, whichever a kernel pairs. ``outputs == 0`` means no pair can saturate, in any order.
        (A CPU with VNNI adds four products in int32, and qnnpack on ARM widens them: there nothing saturates.)
    """
    x = codes.to(torch.int64)
    w = weight.to(torch.int64)
    if w.dim() == 4:
        out_channels, channels, k, _ = w.shape
        x = x.unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 4, 5, 1).reshape(-1, k * k * channels)
        w = w.permute(0, 2, 3, 1).reshape(out_channels, -1)
    # Two products leave int16 only if their codes add up to 257 or more (128 * 128 * 2 is -32768 at most):
    # only rows holding two such codes need a look.
    top = x.topk(min(2, x.shape[1]), dim=1).values.sum(dim=1)
    x = x[top >= 257]
    pairs = outputs = 0
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk]
        _, clipped = pair_saturated_linear(rows, w)
        pairs += int(clipped.sum())
        products = rows[:, None, :] * w[None, :, :]
        highest = products.topk(min(2, products.shape[-1]), dim=-1).values.sum(dim=-1)
        lowest = -(-products).topk(min(2, products.shape[-1]), dim=-1).values.sum(dim=-1)
        outputs += int(((highest > 2**15 - 1) | (lowest < -(2**15))).sum())
    return pairs, outputs


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
    """Seconds per image of ``run(images)``: the best of ``repeats`` timed calls, after one warm-up call.

    For a batch, that is the batch's time divided by its size (throughput); pass one image for latency.
    """
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
