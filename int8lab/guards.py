"""Integer-range checks on the inputs of a quantized network's layers, with a diagnosis of the likely mistake."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .checks import explain
from .models import LAYER_NAMES

INT8_MIN, INT8_MAX = -128, 127


class Int8RangeError(ValueError):
    """A layer of a quantized network received values that are not int8 integers."""


def diagnose(values: torch.Tensor, layer: str, low: int = INT8_MIN, high: int = INT8_MAX) -> str | None:
    """Return why ``values`` (fed to ``layer``) are not integers in [low, high], or None when they are.

    The message names the layer, the min and max seen, and the misconception the numbers
    point to, so that a student knows where to look.
    """
    values = values.detach()
    if values.numel() == 0:
        return None
    if torch.isnan(values).any():
        # NaN comes from 0/0 or inf - inf: a scale of 0 is one way, an overflow to inf is another, so no name
        return f"input to {layer} contains NaN (from 0/0 or inf - inf: a scale of 0, or values that overflowed)"
    lo, hi = values.min().item(), values.max().item()
    seen = f"input to {layer} ranges over [{lo:.4g}, {hi:.4g}], outside the int8 range [{low}, {high}]"
    if math.isinf(lo) or math.isinf(hi):
        return f"{seen}: infinite values come from dividing by a scale of 0.{explain('zero_scale')}"
    if lo < low or hi > high:
        if max(abs(lo), abs(hi)) >= 1000:
            # About 1e3 and more: far beyond what a missing clamp lets through after a sane scale.
            return f"{seen}.{explain('multiplied_scale')}"
        if lo >= 0 and hi == 255:  # saturated at 255: clamped, but to the unsigned range
            return f"{seen}.{explain('clamp_unsigned')}"
        return f"{seen}.{explain('forgot_clamp')}"
    if not torch.equal(values, values.round()):
        return f"input to {layer} holds non-integer values (min {lo:.4g}, max {hi:.4g}).{explain('forgot_round')}"
    return None


def check_int_range(values: torch.Tensor, layer: str, low: int = INT8_MIN, high: int = INT8_MAX) -> None:
    """Raise ``Int8RangeError`` with a diagnosis unless ``values`` are integers in [low, high]."""
    problem = diagnose(values, layer, low, high)
    if problem:
        raise Int8RangeError(problem)


def install_int8_guards(model: nn.Module, layers=LAYER_NAMES) -> list:
    """Check, before each of ``layers`` runs, that its input holds int8 integers (like the original lab's hooks).

    Returns the hook handles; call ``handle.remove()`` on each to take the guards off.
    """

    # The message names the method that fed the layer, so that a student knows what to fix.
    where = f"{type(model).__name__}.forward"

    def guard(name):
        def pre_hook(_module, inputs):
            check_int_range(inputs[0], f"{name} in {where}")

        return pre_hook

    return [getattr(model, name).register_forward_pre_hook(guard(name)) for name in layers]
