"""Integer kernels for notebooks 4 and 6: convolution, matrix product and pooling on real 8-bit tensors.

PyTorch's ``F.conv2d`` refuses plain integer tensors (its quantized kernels work on quantized tensor
types and hide the accumulator), so ``conv2d_int32`` lays the input's patches
out as rows (``Tensor.unfold``, a view that works for any dtype) and multiplies them by the
filters with an int32 matrix product. Every product of two int8 values and every partial sum
is an integer, so the result is exact as long as the sum fits in int32.

The activations are torch.int8 codes (notebook 4, symmetric) or torch.uint8 codes (notebook 6, with a
zero point); weights are always torch.int8. Each kernel checks its dtypes and says what went wrong: a
float tensor reaching a layer means the forward pass dequantized somewhere. None of this computes a
graded answer.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import torch
import torch.nn as nn
import torch.overrides


class IntegerPipelineError(TypeError):
    """A tensor with the wrong dtype reached an integer kernel."""


class IntegerPipelineWarning(UserWarning):
    """A function meant to run on integers computed a float tensor on the way."""


# Every occurrence is shown: a student who reruns a cell without fixing it must see the warning again.
warnings.filterwarnings("always", category=IntegerPipelineWarning)


class AccumulatorRecord:
    """What ``recorded_accumulators`` saw: ``largest[name]`` (int), and ``tensors[name]`` when captured."""

    def __init__(self, capture: bool):
        self.capture = capture
        self.largest: dict[str, int] = {}
        self.tensors: dict[str, list[torch.Tensor]] = {}


_recording: AccumulatorRecord | None = None


#: The dtypes an 8-bit activation may have: signed codes (notebook 4) or unsigned codes with a zero point (notebook 6).
CODE_DTYPES = (torch.int8, torch.uint8)


def _require(tensor: torch.Tensor, dtype: torch.dtype | tuple[torch.dtype, ...], what: str) -> None:
    """Raise ``IntegerPipelineError`` unless ``tensor`` has ``dtype`` (or one of several), naming the likely mistake."""
    dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
    if not isinstance(tensor, torch.Tensor) or tensor.dtype not in dtypes:
        got = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        dtype = dtypes[0]
        if dtype == torch.int8 and got == torch.int32:
            hint = " An int32 accumulator reached the next layer: requantize every layer's accumulator to int8 first."
        elif dtype == torch.int8 and isinstance(got, torch.dtype) and got.is_floating_point:
            hint = f" A float tensor reached an integer layer: {KEEP_FORWARD_INTEGER}."
        else:
            hint = ""
        wanted = " or ".join(str(d) for d in dtypes)
        raise IntegerPipelineError(f"{what} must be a {wanted} tensor, got {got}.{hint}")


def _record(name: str | None, accumulator: torch.Tensor) -> None:
    if _recording is None or name is None or not accumulator.numel():
        return
    _recording.largest[name] = max(_recording.largest.get(name, 0), int(accumulator.abs().max()))
    if _recording.capture:
        _recording.tensors.setdefault(name, []).append(accumulator.clone())


@contextlib.contextmanager
def recorded_accumulators(capture: bool = False):
    """Within the block, note each named layer's largest |accumulator| (and, with ``capture``, keep them all)."""
    global _recording
    outer, _recording = _recording, AccumulatorRecord(capture)
    try:
        yield _recording
    finally:
        _recording = outer


class _FloatWatch(torch.overrides.TorchFunctionMode):
    """Notes every torch function or tensor method that returns a floating-point tensor."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []
        self.callers: set[str] = set()  # the functions the float operations ran in, to name the mistake

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        outputs = result if isinstance(result, (tuple, list)) else (result,)
        if any(isinstance(out, torch.Tensor) and out.is_floating_point() for out in outputs):
            self.seen.append(getattr(func, "__name__", repr(func)))
            frame = sys._getframe(1)
            for _ in range(12):
                if frame is None:
                    break
                self.callers.add(frame.f_code.co_name)
                frame = frame.f_back
        return result


#: What the warning asks for, by where the float operation ran.
KEEP_REQUANTIZE_INTEGER = (
    "keep every step from the int32 accumulator to the int8 result integer (an int64 product, >>, torch.where, "
    "torch.clamp): the hardware this models has no float unit there, and the tests compare integers bit for bit, "
    "which float arithmetic misses near rounding ties"
)
KEEP_FORWARD_INTEGER = (
    "keep int8 activations and int32 accumulators from the quantized input to the logits, and requantize each "
    "accumulator with requantize: the tests compare the logits bit for bit, which a float requantization misses"
)
#: The same for notebook 6's network, whose codes are uint8 with zero points and whose requantization is
#: rounding_shift plus integer additions and clamps.
KEEP_AFFINE_FORWARD_INTEGER = (
    "keep 8-bit codes (uint8, with their zero points) and int32 accumulators from the input codes to the logits: "
    "requantize each accumulator with rounding_shift, then add the zero point and clamp, all on integer tensors; "
    "the tests compare the logits bit for bit, which a float requantization misses"
)


def _watch_float(call, what: str, advice: str):
    """``call()``, warning (``IntegerPipelineWarning``, naming ``what`` and giving ``advice``) if any torch
    operation in it returned a float tensor.

    A warning, not an error: this watch runs in the student's kernel, where a student can switch it off, so
    it must not decide any points. The graded tests compare values bit for bit, on inputs (near rounding
    ties, large products) where float arithmetic gives other integers.
    """
    with _FloatWatch() as watch:
        result = call()
    if watch.seen:
        ops = ", ".join(dict.fromkeys(watch.seen))
        if "requantize" in watch.callers:  # forward is integer; the float arithmetic is in requantize
            advice, what = KEEP_REQUANTIZE_INTEGER, f"{what} (in requantize)"
        warnings.warn(f"{what} computed in float ({ops}): {advice}.", IntegerPipelineWarning, stacklevel=3)
    return result


def integer_only(function, advice: str = KEEP_REQUANTIZE_INTEGER):
    """``function`` wrapped so that a call warns (``IntegerPipelineWarning``) if any torch operation in it
    returned a float tensor; the warning names the operations and gives ``advice``."""
    name = getattr(function, "__name__", "the function")

    def watched(*args, **kwargs):
        return _watch_float(lambda: function(*args, **kwargs), name, advice)

    return watched


class IntegerModule(nn.Module):
    """A module whose ``forward`` takes and returns 8-bit codes and should compute no float on the way.

    Calling it checks the input's and the result's dtype (``IntegerPipelineError``): one of ``code_dtypes``,
    torch.int8 unless a subclass says otherwise (notebook 6's network also takes torch.uint8). It runs
    ``forward`` while watching every torch operation: one that produced a float tensor gets an
    ``IntegerPipelineWarning`` naming it and giving ``float_advice``. ``module.forward(x)`` runs without either
    (for timing).
    """

    code_dtypes: tuple[torch.dtype, ...] = (torch.int8,)
    #: What the warning asks of a forward that computed a float (notebook 6's network has its own).
    float_advice: str = KEEP_FORWARD_INTEGER

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        _require(x, self.code_dtypes, f"the input of {name}")
        result = _watch_float(lambda: super(IntegerModule, self).__call__(x), f"{name}.forward", self.float_advice)
        _require(result, self.code_dtypes, f"the result of {name}.forward")
        return result


def conv2d_int32(x: torch.Tensor, weight: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Valid 2-D convolution, stride 1, of 8-bit images with int8 filters, accumulated in int32.

    Args:
        x: torch.int8 or torch.uint8 codes, shape (N, C, H, W).
        weight: torch.int8, shape (O, C, k, k).
        name: the layer's name, for ``recorded_accumulators``.

    Returns:
        torch.int32 of shape (N, O, H - k + 1, W - k + 1): each output is the sum of C·k·k
        products of an int8 weight and an 8-bit code.
    """
    _require(x, CODE_DTYPES, f"the input of {name or 'a convolution'}")
    _require(weight, torch.int8, f"the weight of {name or 'a convolution'}")
    batch, channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    rows, cols = height - k + 1, width - k + 1
    # (N, C, rows, cols, k, k): every k x k patch, for every channel, as a view of x.
    patches = x.to(torch.int32).unfold(2, k, 1).unfold(3, k, 1)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(batch, rows * cols, channels * k * k)
    filters = weight.to(torch.int32).reshape(out_channels, channels * k * k)
    accumulator = (patches @ filters.T).permute(0, 2, 1).reshape(batch, out_channels, rows, cols)
    _record(name, accumulator)
    return accumulator


def linear_int32(x: torch.Tensor, weight: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """``x @ weight.T`` for 8-bit codes ``x`` (N, F), int8 or uint8, and int8 ``weight`` (O, F), accumulated in
    int32 (N, O)."""
    _require(x, CODE_DTYPES, f"the input of {name or 'a linear layer'}")
    _require(weight, torch.int8, f"the weight of {name or 'a linear layer'}")
    accumulator = x.to(torch.int32) @ weight.to(torch.int32).T
    _record(name, accumulator)
    return accumulator


def max_pool2x2_int8(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling, stride 2, of 8-bit feature maps (N, C, H, W) with even H and W, int8 or uint8: the same dtype.

    Pooling commutes with any increasing map, so it runs on the codes whatever their scale and zero point.
    """
    _require(x, CODE_DTYPES, "the input of max-pooling")
    batch, channels, height, width = x.shape
    return x.reshape(batch, channels, height // 2, 2, width // 2, 2).amax(dim=(3, 5))


def relu_int8(x: torch.Tensor) -> torch.Tensor:
    """ReLU on int8 values: negative values become 0, the dtype stays int8."""
    _require(x, torch.int8, "the input of ReLU")
    return torch.clamp(x, min=0)
