"""Comparison helpers for the notebooks' tests: clear failure messages that name known misconceptions.

Nothing here knows a right answer. The tests pass in what they expect (literal golden values
in visible tests, values computed by hidden code in hidden tests) and, optionally, what each
known wrong answer would have returned; these helpers compare and explain.
"""

from __future__ import annotations

import builtins
import math

import numpy as np
import torch

# Bound at import, so that a later monkeypatch of numpy or torch in a notebook cannot make
# these comparisons pass; the autograder checks separately that they are still intact.
_array = np.array
_isclose = math.isclose
_abs = builtins.abs

#: Known misconceptions, by key: the sentence a student sees when a wrong answer matches one.
MISCONCEPTIONS = {
    "naive_output_scale": (
        "your output scale looks like max|activations|/127, a scale for the float output Out; but what a "
        "layer's integer accumulator holds is not Out. Work out what it holds in derivations 2.2 and 2.3, "
        "then fix NetQuantized.quantize_activations"
    ),
    "missing_chain": (
        "your output scale accounts for this layer's weight scale and the input scale but for nothing from the "
        "earlier layers in ss; derivation 2.3 shows what they leave in the accumulator"
    ),
    "chain_previous_only": (
        "your output scale divides by the last (s_w, s_out) pair of ss only; derivation 2.3 shows what the "
        "accumulator carries from every earlier layer"
    ),
    "chain_outputs_only": (
        "your output scale divides by the earlier layers' output scales but not by their weight scales; see "
        "derivation 2.3"
    ),
    "multiplied_scale": (
        "the scale was multiplied instead of divided: this lab's convention is q = round(x / s) "
        "(the original lab multiplied by n = 1/s)"
    ),
    "inverse_scale": (
        "your scale is 1/s: that is the original lab's n = 127 / max|x| convention; here the scale is "
        "s = max|x| / 127 and q = round(x / s)"
    ),
    "range_scale": (
        "your scale looks like (max - min) / 255: that is an asymmetric scale, which needs a zero point; this "
        "lab's int8 is symmetric, with no zero point, so the scale covers max|x| with 127 steps"
    ),
    "scale_128": (
        "your scale divides by 128: int8's positive side ends at 127, so a largest value of +max|x| would round "
        "to 128 and be clamped; divide by 127"
    ),
    "inverse_unsigned_scale": (
        "your scale looks like 255 / max|x|: that is inverted (q = round(x / s) here, not x * n) and counts "
        "uint8's 255 steps instead of int8's 127 on each side of zero"
    ),
    "floor_not_round": "the values look floored or truncated (floor, trunc or int()) instead of rounded to nearest",
    "no_clamp": ("values fall outside the integer range (int8: [-128, 127]; int32 for a bias): clamp after rounding"),
    "clamp_127": "-128 never appears where it should: the clamp uses [-127, 127] instead of int8's [-128, 127]",
    "clamp_unsigned": "the values look clamped to [0, 255] (unsigned) instead of int8's signed [-128, 127]",
    "max_not_abs": (
        "the scale looks computed from max(x) instead of max(|x|): it fails when the largest magnitude is negative"
    ),
    "zero_scale": "an all-zero tensor gives max|x| = 0: dividing by a scale of 0 produces NaN",
    "layer_not_requantized": (
        "a layer's integer accumulator was rounded without first being divided by its output_scale (often fc3, "
        "the last one): in NetQuantized.forward every layer, fc3 included, divides by layer.output_scale, then "
        "rounds and clamps"
    ),
    "multiplied_weight_scale": (
        "NetQuantized.forward multiplies by layer.weight.scale: the output scales from quantize_activations "
        "already account for every weight scale (derivation 2.3), so forward divides by layer.output_scale only"
    ),
    "m0_not_normalised": (
        "your m0 is not normalised into [2**(bits-1), 2**bits): with a fixed shift, a small multiplier gets an "
        "m0 with few significant bits and loses precision; choose the shift that puts m0's top bit at bits - 1 "
        "(fixed_point_multiplier)"
    ),
    "shift_truncates": (
        "requantize shifts right without rounding: >> rounds towards minus infinity; add half of 2**shift "
        "(away from zero, as the docstring states) before shifting"
    ),
    "shift_wrong_direction": (
        "requantize shifts the wrong way: m0 * 2**-shift is a right shift by shift bits, not a left shift"
    ),
    "int32_overflow": (
        "acc * m0 was computed in int32 and wrapped around: an int32 accumulator times a 31-bit m0 needs up to "
        "62 bits, so requantize must multiply in int64"
    ),
    "float_requantize": (
        "requantize computed in float: these are the integers of accumulator * m0 / 2**shift in float64 or float32, "
        "whose 53 or 24 bits cannot hold every 62-bit product (one a hair below a rounding tie lands on the tie); "
        "the hardware it models has no float unit on this path, so every step from the int32 accumulator to the int8 "
        "result, the rounding included, must stay an integer tensor operation"
    ),
    "bias_not_added": (
        "the logits look computed without fc3's int32 bias: in IntegerOnlyNet.forward, add self.biases[name] to "
        "the layer's accumulator before requantizing it"
    ),
    "dequantized_forward": (
        "IntegerOnlyNet.forward requantizes in float (the accumulator times m0 / 2**shift, then torch.round, which "
        "sends ties to even): it must keep int8 activations and int32 accumulators from the quantized input to the "
        "logits, and requantize each accumulator with requantize, with no float scale"
    ),
    "bias_own_scale": (
        "your bias has a scale of its own, max|bias| / 127, like a weight; but the bias is added to the integer "
        "accumulator, so its integers must count in the accumulator's units: see derivation 3.2, then fix "
        "NetQuantizedWithBias.quantized_bias"
    ),
    "bias_int8_clamp": "the bias was clamped to the int8 range; a bias is stored in int32: [-2**31, 2**31 - 1]",
    "bias_missing_chain": (
        "your bias scale leaves out what the earlier layers in ss contribute to fc3's accumulator: derivation 3.2 "
        "asks for the scale for fc3, not for a first layer; then fix NetQuantizedWithBias.quantized_bias"
    ),
    "forgot_round": (
        "an activation holds non-integers: round (torch.round, not floor, trunc or int()) after dividing by the scale"
    ),
    "forgot_clamp": "an intermediate activation leaves [-128, 127]: clamp after rounding",
    "relu_misplaced": (
        "a ReLU is applied where the float network has none (on the input or on fc3's logits), which changes "
        "the results; requantize every layer, then apply exactly the float network's ReLUs and pooling"
    ),
    "bits_ignored": (
        "the codes are clamped to 8-bit ranges whatever `bits` says: b-bit codes hold [-2**(b-1), 2**(b-1) - 1] "
        "signed and [0, 2**b - 1] unsigned"
    ),
    "narrow_range": (
        "the signed codes stop at -(2**(b-1) - 1): the most negative code -2**(b-1) (int8's -128) is legal too"
    ),
    "unsigned_as_signed": (
        "unsigned codes are clamped to the signed range: unsigned b-bit codes hold [0, 2**b - 1], "
        "which is the point of them"
    ),
    "unsigned_half_range": (
        "unsigned codes stop at 2**(b-1) - 1: they reach 2**b - 1, twice as many levels as signed codes have above 0"
    ),
    "statistics_not_abs": (
        "the percentile or the mean and standard deviation look taken of x instead of |x|: "
        "a threshold bounds how far from zero values reach, in both directions"
    ),
    "sigma_not_capped": (
        "mean + k*std of |x| is returned even where it exceeds max|x|: cap the threshold at max|x|, "
        "beyond which it only wastes levels"
    ),
    "mse_not_dequantized": (
        "the search looks like it compared the codes quantize(x, s, ...) with x; compare the dequantized "
        "values quantize(x, s, ...) * s with x"
    ),
    "sample_std": (
        "the standard deviation looks like the sample one, divided by n - 1: the docstring asks for the "
        "population standard deviation of |x|, divided by n"
    ),
    "wrapped_not_saturated": (
        "values beyond [-128, 127] wrapped around (500 became -12) instead of saturating: converting to "
        "torch.int8 keeps only the low 8 bits, so clamp before converting"
    ),
    "int16_accumulator": (
        "the accumulators look as if they were held in int16 and wrapped around: a layer's sum of hundreds of "
        "int8 x int8 products needs far more than 16 bits (section 4.9), keep it in int32"
    ),
    "per_tensor_scale": (
        "one scale for the whole tensor: per-channel quantization gives each output channel c (dim 0) "
        "its own scale max|w[c]| / (2**(bits-1) - 1)"
    ),
    "per_input_channel": (
        "the scales look taken over dim 1 (input channels): one scale per output channel means per row "
        "of dim 0, the maximum over all of that channel's other dimensions"
    ),
    "zero_point_not_integer": (
        "your zero point is not an integer: it is the code that 0.0 quantizes to, and codes are integers; with a "
        "fractional zero point 0.0 has no code of its own and comes back as s * (round(z) - z), not 0 "
        "(derivation 6.1): round it in affine_parameters"
    ),
    "zero_point_not_clamped": (
        "your zero point lies outside the code range: it is the code of 0.0, so it must be one of the codes, or 0.0 "
        "quantizes to a clamped code that does not dequantize to 0 (derivation 6.1); look at where the range's lowest "
        "value lands: on the lowest code, which is -2**(bits-1) for signed codes"
    ),
    "zero_not_representable": (
        "0.0 is not exactly representable with these parameters: the range was used as it is, so for a range that "
        "does not contain 0 the zero point falls outside the codes and 0.0 quantizes to a clamped code that does not "
        "dequantize to 0 (derivation 6.1); affine_parameters widens the range to include 0.0 first"
    ),
    "zero_point_subtracted": (
        "the zero point looks subtracted when quantizing (or added when dequantizing): the zero point is the code of "
        "0.0, so quantizing adds it to the rounded steps and dequantizing takes it off again"
    ),
    "correction_forgotten": (
        "the zero-point correction of derivation 6.4 is missing: folded_bias returned the bias codes unchanged, as "
        "if the input's zero point were 0"
    ),
    "correction_wrong_sign": (
        "the zero-point correction has the wrong sign: folded_bias adds what derivation 6.4 subtracts; expand the "
        "sum of the weight codes times the input codes minus their zero point again"
    ),
    "correction_per_tensor": (
        "the zero-point correction is the same for every output channel, computed from all of the layer's weight "
        "codes at once; derivation 6.4 gives each output channel (dim 0) a correction from its own weights only"
    ),
    "weight_zero_point": (
        "the weights look quantized with a zero point, affinely, as activations are: weights stay symmetric, with a "
        "scale of max|w[c]| / (2**(bits-1) - 1) and no zero point, because a weight zero point adds a correction "
        "that depends on the input (derivation 6.4, part 3)"
    ),
    "multipliers_per_input_channel": (
        "the multipliers look built from one weight scale per input channel (dim 1): the multiplier of output "
        "channel c comes from the scale of the weights that produce output c, row c of dim 0 (derivation 6.4, part 2)"
    ),
    "relu_at_code_zero": (
        "the ReLU looks applied at code 0, or not at all: on affine codes 0.0 is the zero point, so the ReLU keeps "
        "every code at or above the output's zero point (AffineIntegerNet.forward)"
    ),
    "output_zero_point_missing": (
        "the output codes look computed without the output's zero point: after requantizing the accumulator, "
        "AffineIntegerNet.forward adds the zero point of the layer's output codes, then saturates (derivation 6.4, "
        "part 2)"
    ),
    "ste_zero_gradient": (
        "the gradient that reaches x is 0 everywhere: that is the true derivative of round (derivation 7.1), with "
        "which nothing before the quantizer ever learns; the straight-through estimator passes the incoming "
        "gradient where lowest <= x / scale <= highest (write backward yourself, in a torch.autograd.Function)"
    ),
    "ste_gradient_outside_clip": (
        "the gradient passes everywhere, outside the clipping range too: where x / scale lies below the lowest code "
        "or above the highest, the clamp holds the output constant, so the straight-through estimator gives 0 there "
        "(derivation 7.1)"
    ),
    "scale_never_updated": (
        "the scale gets no gradient (None or 0), so training never changes it: LearnedStepQuantize.backward returns "
        "a gradient for the scale (section 7.3), and the scale must stay a tensor in the graph (no float(), no "
        ".detach())"
    ),
    "lsq_no_gradient_scale": (
        "the scale's gradient lacks LSQ's gradient scale: multiply the sum by g = 1 / sqrt(N * Q_P), with N the "
        "number of elements that share the scale and Q_P the highest code (section 7.3)"
    ),
    "bn_wrong_variance": (
        "the folded weights divide by the variance itself (running_var, or running_var + eps), not by the "
        "standard deviation: BatchNorm divides by sqrt(running_var + eps) (derivation 7.4)"
    ),
    "bn_no_epsilon": (
        "the fold divides by sqrt(running_var) without bn.eps: BatchNorm divides by sqrt(running_var + eps), and "
        "for a channel of small variance eps changes the weights by per cents (derivation 7.4)"
    ),
    "bn_folded_after_quantization": (
        "the weights look fake-quantized before the BatchNorm is applied: quantize the folded weights "
        "(float_parameters), which are what the integer network runs (derivation 7.4)"
    ),
    "fake_quant_not_in_eval": (
        "in eval mode the logits are the float network's: fake quantization must stay in the forward pass whatever "
        "the mode, or the accuracy measured is not the quantized network's"
    ),
}


class CheckFailed(AssertionError):
    """A test's check failed; the message says what was expected and what came back."""


def _as_array(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return _array(value, dtype=np.float64)


def _same(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> bool:
    if got.shape != expected.shape:
        return False
    both_nan = np.isnan(got) & np.isnan(expected)
    close = np.abs(got - expected) <= atol + rtol * np.abs(expected)
    return bool(np.all(close | both_nan))


def _number(value: float, digits: int) -> str:
    """An integer exactly; another number with ``digits`` significant digits."""
    if np.isfinite(value) and value == np.round(value) and _abs(value) < 2**53:
        return str(int(value))
    return f"{value:.{digits}g}"


def _digits_to_tell(expected: float, got: float) -> int:
    """The fewest significant digits (6 at least) at which two different numbers print differently."""
    for digits in range(6, 18):
        if _number(expected, digits) != _number(got, digits):
            return digits
    return 17


def _preview(values: np.ndarray, digits: int = 6, limit: int = 8) -> str:
    flat = values.ravel()
    shown = ", ".join(_number(v, digits) for v in flat[:limit])
    more = f", ... ({flat.size} values, shape {tuple(values.shape)})" if flat.size > limit else ""
    return f"[{shown}{more}]"


def _difference(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float, inputs=None) -> str:
    """How many values differ, and the first one: its index, its input when given, expected and got."""
    both_nan = np.isnan(got) & np.isnan(expected)
    differs = ~((np.abs(got - expected) <= atol + rtol * np.abs(expected)) | both_nan)
    first = tuple(int(i) for i in np.argwhere(differs)[0]) if differs.any() else ()
    want, have = float(expected[first]), float(got[first])
    digits = _digits_to_tell(want, have)
    where = f" at index {list(first)}" if first else ""
    if inputs is not None:
        input_array = _as_array(inputs)
        if input_array.shape == expected.shape:
            where += f" (input {_number(float(input_array[first]), 9)})"
    if expected.size == 1:
        return f"expected {_number(want, digits)}, got {_number(have, digits)}"
    head = f"{int(differs.sum())} of {expected.size} values differ; the first{where}: "
    detail = f"expected {_number(want, digits)}, got {_number(have, digits)}"
    if expected.size <= 8:
        detail += f" (expected {_preview(expected, digits)}, got {_preview(got, digits)})"
    return head + detail


def matching_misconception(got, candidates, rtol: float = 1e-5, atol: float = 1e-8) -> str | None:
    """The key of the candidate wrong answer equal to ``got``, or None.

    ``candidates`` maps keys of ``MISCONCEPTIONS`` to wrong answers, as a dict or as a list of
    ``(key, wrong answer)`` pairs when one misconception has several forms, or is a function of no
    arguments that returns them (``known_mistakes``: a hidden test whose wrong answers each cost a
    forward pass computes them only for a value that fails). When the wrong answers of several
    misconceptions are all equal to ``got``, the value cannot tell them apart: the keys are joined
    with ``|``, and ``explain`` names each.
    """
    if callable(candidates):
        candidates = candidates()
    got_array = _as_array(got)
    pairs = candidates.items() if isinstance(candidates, dict) else (candidates or [])
    matched = []
    for key, wrong in pairs:
        wrong_array = _as_array(wrong)
        if wrong_array.shape == got_array.shape and _same(got_array, wrong_array, rtol, atol) and key not in matched:
            matched.append(key)
    return "|".join(matched) or None


def explain(key: str | None) -> str:
    """The sentence that names misconception ``key`` (or each of ``a|b``) in a failure message ('' for None)."""
    if not key:
        return ""
    # One line: the grader reports the first line of a failure.
    sentences = [MISCONCEPTIONS[part] for part in key.split("|")]
    if len(sentences) == 1:
        return f" This matches a known misconception: {sentences[0]}."
    return " This matches more than one known misconception: " + "; or ".join(sentences) + "."


def check_close(
    what: str, got, expected, misconceptions=None, rtol=1e-5, atol=1e-8, inputs=None, diagnose: bool = True
) -> None:
    """Raise ``CheckFailed`` unless ``got`` equals ``expected`` within tolerance (elementwise, same shape).

    Args:
        what: the call being checked, as the student should read it, e.g. ``"quantized_weights(w)[1]"``.
        got, expected: numbers, numpy arrays or tensors.
        misconceptions: ``{key of MISCONCEPTIONS: the wrong answer that misconception gives}``,
            or a list of such ``(key, wrong answer)`` pairs, or a function of no arguments that returns
            them: called only when ``got`` fails (``matching_misconception``).
        inputs: the input value behind each expected value (same shape), shown for the first difference.
        diagnose: False names only ``misconceptions``, never a rounding or clamping mistake read from how the
            values differ (``_diagnose_integers``).
    """
    got_array, expected_array = _as_array(got), _as_array(expected)
    if _same(got_array, expected_array, rtol, atol):
        return
    if got_array.shape != expected_array.shape:
        detail = f"expected shape {tuple(expected_array.shape)}, got shape {tuple(got_array.shape)}"
    else:
        detail = _difference(got_array, expected_array, rtol, atol, inputs)
    key = matching_misconception(got, misconceptions, rtol, atol)
    if key is None and diagnose:
        key = _diagnose_integers(got_array, expected_array)
    raise CheckFailed(f"{what}: {detail}{explain(key)}")


#: How close to a rounding tie k + 1/2, relative to the quotient, an honest computation may land on either side.
#: A float32 quotient x / s is within about 2**-23 of the exact one (the scale's rounding, then the division's);
#: 2**-20 leaves a factor of 8.
TIE_WINDOW = 2.0**-20


def check_codes(what: str, got, exact, lowest: int, highest: int, misconceptions=None) -> None:
    """Raise ``CheckFailed`` unless ``got`` holds the codes ``clamp(round(exact), lowest, highest)``, rounded half
    to even, but for one code's difference where an honest computation may round either way.

    ``exact`` is the quotient the codes round (``x / s``), computed by the test in float64. Where it lies within
    ``|exact| * TIE_WINDOW`` of a tie k + 1/2, a float32 (or float64) computation of the same quotient can land on
    the other side: there either neighbour is accepted. When such a neighbour is among the values that differ,
    the failure names only the given ``misconceptions``: a value one below there is no sign of floor.
    """
    got_array, exact_array = _as_array(got), _as_array(exact)
    expected = np.clip(np.round(exact_array), lowest, highest)  # np.round: half to even
    if got_array.shape != exact_array.shape:
        check_close(what, got, expected, misconceptions, rtol=0, atol=0)
        return
    near = np.abs(exact_array - np.floor(exact_array) - 0.5) <= np.abs(exact_array) * TIE_WINDOW
    below, above = np.clip(np.floor(exact_array), lowest, highest), np.clip(np.ceil(exact_array), lowest, highest)
    either = near & ((got_array == below) | (got_array == above))
    accepted = np.where(either, got_array, expected)
    tolerated = bool((either & (got_array != expected)).any())
    check_close(what, got, accepted, misconceptions, rtol=0, atol=0, diagnose=not tolerated)


def _diagnose_integers(got: np.ndarray, expected: np.ndarray) -> str | None:
    """Recognise the usual rounding and clamping mistakes by how ``got`` differs from ``expected``.

    Each rule names a mistake only when the values show its own signature, so that another mistake
    is not given its name: all-zero outputs are not "clamped to [0, 255]", ties rounded the wrong
    way only on the negative side are not "floored or truncated", a NaN where 2.5 was expected is
    not the all-zero case.
    """
    if got.shape != expected.shape or got.size == 0:
        return None
    if np.isfinite(expected).all() and ((expected < -128).any() or (expected > 127).any()):
        return None  # not an int8 result (a bias, say): these int8 rules do not apply
    if np.isnan(got).any() and not np.isnan(expected).any():
        # 0 / 0: a zero scale divides zeros, so NaN appears exactly where zeros were expected
        return "zero_scale" if (expected[np.isnan(got)] == 0).all() else None
    if not np.all(np.isfinite(got)) or not np.all(got == np.round(got)):
        return None
    if (got < -128).any() or (got > 127).any():
        return "clamp_unsigned" if got.min() >= 0 and got.max() <= 255 else "no_clamp"
    negative = expected < 0
    if (
        negative.any()
        and (got[negative] == 0).all()
        and np.array_equal(got[~negative], expected[~negative])
        and (expected[~negative] > 0).any()
    ):
        return "clamp_unsigned"
    differs = got != expected
    if (expected == -128).any() and np.array_equal(got[differs], np.full(differs.sum(), -127.0)):
        return "clamp_127"
    steps = got[differs] - expected[differs]
    if not np.all(_abs(steps) == 1):
        return None
    if np.all(steps == -1):
        return "floor_not_round"  # floor: one below wherever it differs
    towards_zero = np.all(_abs(got[differs]) < _abs(expected[differs]))
    if towards_zero and (expected[differs] > 0).any() and (expected[differs] < 0).any():
        return "floor_not_round"  # trunc or int(): one closer to zero, on both sides
    return None


def check_scale(what: str, got, expected: float, misconceptions=None, rtol: float = 1e-5) -> None:
    """Raise ``CheckFailed`` unless the scale ``got`` is a positive float close to ``expected``.

    Besides the given ``misconceptions``, recognises a scale returned as 1/s.
    """
    try:
        value = float(got)
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: expected a float scale, got {type(got).__name__} {got!r}") from None
    if _isclose(value, expected, rel_tol=rtol, abs_tol=0.0):
        return
    key = matching_misconception(value, misconceptions, rtol=rtol)
    if key is None and value != 0 and _isclose(value * expected, 1.0, rel_tol=1e-4):
        key = "inverse_scale"
    if key is None and expected == 1.0 and (math.isnan(value) or value == 0):
        key = "zero_scale"  # 1.0 is the all-zero input's scale: 0 or 0/0 means max|x| = 0 was divided by
    raise CheckFailed(f"{what}: expected a scale of {expected:.8g}, got {value:.8g}{explain(key)}")


def check_true(condition: bool, message: str, misconception=None) -> None:
    """Raise ``CheckFailed`` with ``message`` (and the named misconception) unless ``condition``.

    ``misconception``: a key of ``MISCONCEPTIONS`` (or keys joined with ``|``), None, or a function of no
    arguments that returns one, called only when ``condition`` is false (``lambda: matching_misconception(...)``
    computes the wrong answers only for a value that fails).
    """
    if not condition:
        raise CheckFailed(message + explain(misconception() if callable(misconception) else misconception))


def check_choice(what: str, got, expected: str, wrong: dict[str, str] | None = None) -> None:
    """Raise ``CheckFailed`` unless the option ``got`` is ``expected``: one letter, case ignored.

    ``"b"``, ``"B"``, ``" b "``, ``"(b)"`` and ``"b)"`` all choose b. The message says which option
    was chosen and, for an option in ``wrong`` (``{letter: why it is wrong}``), why it is wrong;
    it never says which option is right.
    """
    if not isinstance(got, str) or not got.strip(" ().").strip():
        raise CheckFailed(f'{what}: expected the letter of one option as a string, such as "a", got {got!r}')
    chosen = got.strip().strip("().").strip().lower()
    if chosen == expected.strip().lower():
        return
    reasons = {letter.strip().lower(): reason for letter, reason in (wrong or {}).items()}
    reason = f" {reasons[chosen]}" if chosen in reasons else ""
    raise CheckFailed(f'{what}: you chose "{chosen}", which is not the right option.{reason}')
