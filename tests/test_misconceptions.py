"""Each misconception of the lab's spec, written as a student would, fails a check that names it.

Every wrong implementation is patched into the solution notebook right after its solution
cell, and the notebook's own test cells (visible and hidden) run against it.
"""

import re
import textwrap

import pytest

from int8lab.checks import MISCONCEPTIONS
from notebook_harness import run_tests

WEIGHTS_TEMPLATE = """
def quantized_weights(weights):
    largest = {largest}
    scale = largest / 127 if largest != 0 else 1.0
    {body}
"""


WEIGHTS_RETURN = "    return torch.clamp(torch.round(weights / scale), -128, 127), scale\n"


def _weights(body, largest="weights.abs().max().item()"):
    return WEIGHTS_TEMPLATE.format(largest=largest, body=body)


FORWARD_TEMPLATE = """
def forward(self, x):
    x = torch.clamp({round}(x / self.input_scale), {low}, 127)
    for name in LAYER_NAMES:
        layer = getattr(self, name)
        x = {clamp_open}{round}(layer(x) / {divide}){clamp_close}
        if name in ("conv1", "conv2"):
            x = self.pool(F.relu(x))
        elif name != "fc3" or {relu_on_logits}:
            x = F.relu(x)
        if name == "conv2":
            x = torch.flatten(x, 1)
    return x

NetQuantized.forward = forward
"""


def _forward(round="torch.round", low=-128, clamp=True, relu_on_logits=False, divide="layer.output_scale"):
    return FORWARD_TEMPLATE.format(
        round=round,
        divide=divide,
        low=low,
        clamp_open="torch.clamp(" if clamp else "",
        clamp_close=f", {low}, 127)" if clamp else "",
        relu_on_logits=relu_on_logits,
    )


def _activations(expression):
    return textwrap.dedent(f"""
    def wrong_quantize_activations(activations, s_w, s_initial_input, ss):
        product = float(np.prod([w * o for w, o in ss])) if ss else 1.0
        return float({expression}) / 127

    NetQuantized.quantize_activations = staticmethod(wrong_quantize_activations)
    """)


def _bias(body):
    return textwrap.dedent(f"""
    def wrong_quantized_bias(bias, s_w, s_initial_input, ss):
        chained = s_w * s_initial_input * (float(np.prod([w * o for w, o in ss])) if ss else 1.0)
        return {body}

    NetQuantizedWithBias.quantized_bias = staticmethod(wrong_quantized_bias)
    """)


# (misconception key, assignment, solution cell to patch after, wrong code)
WRONG_IMPLEMENTATIONS = [
    ("multiplied_scale", "01_weights", _weights("return torch.clamp(torch.round(weights * scale), -128, 127), scale")),
    (
        "inverse_scale",
        "01_weights",
        _weights("n = 1 / scale\n    return torch.clamp(torch.round(weights * n), -128, 127), n"),
    ),
    ("floor_not_round", "01_weights", _weights("return torch.clamp(torch.floor(weights / scale), -128, 127), scale")),
    ("floor_not_round", "01_weights", _weights("return torch.clamp(torch.trunc(weights / scale), -128, 127), scale")),
    ("floor_not_round", "01_weights", _weights("return (weights / scale).int().float().clamp(-128, 127), scale")),
    ("clamp_unsigned", "01_weights", _weights("return torch.clamp(torch.round(weights / scale), 0, 255), scale")),
    (
        "max_not_abs",
        "01_weights",
        _weights("return torch.clamp(torch.round(weights / scale), -128, 127), scale", "weights.max().item()"),
    ),
    (
        "zero_scale",
        "01_weights",
        "def quantized_weights(weights):\n    scale = weights.abs().max().item() / 127\n"
        "    return torch.clamp(torch.round(weights / scale), -128, 127), scale\n",
    ),
    *[
        (key, "01_weights", f"def quantized_weights(weights):\n    scale = {scale}\n{WEIGHTS_RETURN}")
        for key, scale in (
            ("range_scale", "(weights.max() - weights.min()).item() / 255"),
            ("scale_128", "weights.abs().max().item() / 128"),
            ("inverse_unsigned_scale", "255 / weights.abs().max().item()"),
        )
    ],
    *[
        (key, "02_activations", f"NetQuantized.quantize_initial_input = staticmethod(lambda pixels: float({scale}))")
        for key, scale in (
            ("range_scale", "(pixels.max() - pixels.min()) / 255"),
            ("scale_128", "np.abs(pixels).max() / 128"),
            ("inverse_unsigned_scale", "255 / np.abs(pixels).max()"),
        )
    ],
    ("naive_output_scale", "02_activations", _activations("np.abs(activations).max()")),
    ("missing_chain", "02_activations", _activations("np.abs(activations / s_w / s_initial_input).max()")),
    ("multiplied_scale", "02_activations", _activations("np.abs(activations * s_w * s_initial_input * product).max()")),
    (
        "chain_previous_only",
        "02_activations",
        _activations("np.abs(activations / (s_w * s_initial_input * (ss[-1][0] * ss[-1][1] if ss else 1.0))).max()"),
    ),
    (
        "chain_outputs_only",
        "02_activations",
        _activations("np.abs(activations / (s_w * s_initial_input * float(np.prod([o for _, o in ss])))).max()"),
    ),
    (
        "max_not_abs",
        "02_activations",
        "NetQuantized.quantize_initial_input = staticmethod(lambda pixels: float(np.max(pixels)) / 127)",
    ),
    (
        "max_not_abs",
        "02_activations",
        _activations("np.max(activations / s_w / s_initial_input / product)"),
    ),
    ("forgot_round", "02_activations", _forward(round="")),
    ("forgot_clamp", "02_activations", _forward(clamp=False)),
    ("clamp_127", "02_activations", _forward(low=-127)),
    ("relu_misplaced", "02_activations", _forward(relu_on_logits=True)),
    ("layer_not_requantized", "02_activations", _forward(divide="(layer.output_scale if name != 'fc3' else 1.0)")),
    ("multiplied_weight_scale", "02_activations", _forward(divide="layer.output_scale * layer.weight.scale")),
    ("bias_int8_clamp", "03_biases", _bias("torch.clamp(torch.round(bias / chained), -128, 127)")),
    (
        "bias_missing_chain",
        "03_biases",
        _bias("torch.clamp(torch.round(bias / (s_w * s_initial_input)), -2**31, 2**31 - 1)"),
    ),
    ("no_clamp", "03_biases", _bias("torch.round(bias / chained)")),
    ("bias_own_scale", "03_biases", _bias("torch.round(bias / (bias.abs().max().item() / 127))")),
]
REQUANTIZE_TEMPLATE = """
def requantize(accumulator, m0, shift):
    product = {product}
    {rounding}
    return torch.clamp(rounded, {low}, 127).to(torch.int8)
"""
ROUNDING = (
    "magnitude = (product.abs() + (1 << (shift - 1))) >> shift\n"
    "    rounded = torch.where(product < 0, -magnitude, magnitude)"
)


def _requantize(product="accumulator.to(torch.int64) * m0", rounding=ROUNDING, low=-128):
    return REQUANTIZE_TEMPLATE.format(product=product, rounding=rounding, low=low)


INTEGER_FORWARD_TEMPLATE = """
def forward(self, x):
    for name in LAYER_NAMES:
        {layer}
        if name in ("conv1", "conv2"):
            x = max_pool2x2_int8(relu_int8(x))
        elif name != "fc3":
            x = relu_int8(x)
        if name == "conv2":
            x = torch.flatten(x, 1)
    return x

IntegerOnlyNet.forward = forward
"""


def _integer_forward(layer: str) -> str:
    """IntegerOnlyNet.forward with ``layer`` (code indented for the loop) as each layer's integer step."""
    return INTEGER_FORWARD_TEMPLATE.format(layer=layer)


INTEGER_ONLY = [
    (
        "m0_not_normalised",
        "04_integer_only",
        "def fixed_point_multiplier(real_multiplier, bits=31):\n"
        "    return (round(real_multiplier * 2**bits), bits) if real_multiplier else (0, 0)\n",
    ),
    ("shift_truncates", "04_integer_only", _requantize(rounding="rounded = product >> shift")),
    ("shift_wrong_direction", "04_integer_only", _requantize(rounding="rounded = product << shift")),
    ("int32_overflow", "04_integer_only", _requantize(product="accumulator * m0")),
    ("clamp_127", "04_integer_only", _requantize(low=-127)),
    (
        "float_requantize",
        "04_integer_only",
        "def requantize(accumulator, m0, shift):\n"
        "    x = accumulator.double() * m0 / 2.0**shift\n"
        "    return torch.clamp(torch.sign(x) * torch.floor(x.abs() + 0.5), -128, 127).to(torch.int8)\n",
    ),
    (
        "dequantized_forward",
        "04_integer_only",
        _integer_forward(
            "accumulator = self.accumulate(name, x) + self.biases.get(name, 0)\n"
            "        m0, shift = self.multipliers[name]\n"
            "        x = torch.clamp(torch.round(accumulator * (m0 / 2**shift)), -128, 127).to(torch.int8)"
        ),
    ),
    (
        "bias_not_added",
        "04_integer_only",
        _integer_forward("x = requantize(self.accumulate(name, x), *self.multipliers[name])"),
    ),
    (
        "int16_accumulator",
        "04_integer_only",
        _integer_forward(
            "accumulator = (self.accumulate(name, x) + self.biases.get(name, 0)).to(torch.int16).to(torch.int32)\n"
            "        x = requantize(accumulator, *self.multipliers[name])"
        ),
    ),
    ("wrapped_not_saturated", "04_integer_only", _requantize().replace("torch.clamp(rounded, -128, 127)", "rounded")),
]
WRONG_IMPLEMENTATIONS += INTEGER_ONLY

QUANTIZE_TEMPLATE = """
def quantize(x, scale, bits, signed):
    scales = torch.as_tensor(scale, dtype=torch.float32)
    if not 2 <= bits <= 16 or not bool(torch.all(torch.isfinite(scales) & (scales > 0))):
        raise ValueError("bad arguments")
    low, high = {signed_range} if signed else {unsigned_range}
    return torch.clamp(torch.round(x / scales), low, high)
"""


def _quantize(signed_range="(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)", unsigned_range="(0, 2**bits - 1)"):
    return QUANTIZE_TEMPLATE.format(signed_range=signed_range, unsigned_range=unsigned_range)


THRESHOLD_TEMPLATE = """
def clip_threshold(values, method, bits=8, signed=True, percentile=99.99, k=3.0, candidates=100):
    if method not in METHODS:
        raise ValueError(method)
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0 or not np.isfinite(array).all():
        raise ValueError("bad values")
    magnitudes = np.abs(array).ravel()
    statistics = {statistics}
    largest = float(magnitudes.max())
    if largest == 0 or method == "max":
        return largest
    if method == "percentile":
        return float(np.percentile(statistics, percentile))
    if method == "sigma":
        return {sigma}
    x = torch.as_tensor(array, dtype=torch.float32)
    errors = []
    for i in range(1, candidates + 1):
        scale = largest * i / candidates / largest_level(bits, signed)
        errors.append(float((({compared} - x) ** 2).mean()))
    return largest * (int(np.argmin(errors)) + 1) / candidates
"""


def _threshold(
    statistics="magnitudes",
    sigma="float(min(statistics.mean() + k * statistics.std(), largest))",
    compared="quantize(x, scale, bits, signed) * scale",
):
    return THRESHOLD_TEMPLATE.format(statistics=statistics, sigma=sigma, compared=compared)


PER_CHANNEL_TEMPLATE = """
def quantized_weights_per_channel(weights, bits=8):
    largest = {largest}
    scales = torch.where(largest > 0, largest / (2 ** (bits - 1) - 1), torch.ones_like(largest))
    return quantize(weights, scales.reshape({shape}), bits, True), scales
"""


PER_CHANNEL_ZERO_SCALE = """
def quantized_weights_per_channel(weights, bits=8):
    scales = weights.abs().reshape(weights.shape[0], -1).amax(dim=1) / (2 ** (bits - 1) - 1)
    shaped = scales.reshape(-1, *([1] * (weights.dim() - 1)))
    return torch.clamp(torch.round(weights / shaped), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1), scales
"""


def _per_channel(largest, shape):
    return PER_CHANNEL_TEMPLATE.format(largest=largest, shape=shape)


RANGES_AND_BITS = [
    ("bits_ignored", "05_ranges_and_bits", _quantize("(-128, 127)", "(0, 255)")),
    ("narrow_range", "05_ranges_and_bits", _quantize(signed_range="(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)")),
    ("unsigned_as_signed", "05_ranges_and_bits", _quantize(unsigned_range="(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)")),
    ("unsigned_half_range", "05_ranges_and_bits", _quantize(unsigned_range="(0, 2 ** (bits - 1) - 1)")),
    ("statistics_not_abs", "05_ranges_and_bits", _threshold(statistics="array.ravel()")),
    ("sigma_not_capped", "05_ranges_and_bits", _threshold(sigma="float(statistics.mean() + k * statistics.std())")),
    ("mse_not_dequantized", "05_ranges_and_bits", _threshold(compared="quantize(x, scale, bits, signed)")),
    (
        "per_tensor_scale",
        "05_ranges_and_bits",
        _per_channel("weights.abs().max().expand(weights.shape[0]).clone()", "-1, *([1] * (weights.dim() - 1))"),
    ),
    (
        "per_input_channel",
        "05_ranges_and_bits",
        _per_channel(
            "weights.abs().transpose(0, 1).reshape(weights.shape[1], -1).amax(dim=1)",
            "1, -1, *([1] * (weights.dim() - 2))",
        ),
    ),
    ("no_clamp", "05_ranges_and_bits", _quantize("(-math.inf, math.inf)", "(-math.inf, math.inf)")),
    (
        "sample_std",
        "05_ranges_and_bits",
        _threshold(sigma="float(min(statistics.mean() + k * statistics.std(ddof=1), largest))"),
    ),
    (
        "max_not_abs",
        "05_ranges_and_bits",
        _per_channel("weights.reshape(weights.shape[0], -1).amax(dim=1)", "-1, *([1] * (weights.dim() - 1))"),
    ),
    ("zero_scale", "05_ranges_and_bits", PER_CHANNEL_ZERO_SCALE),
]
WRONG_IMPLEMENTATIONS += RANGES_AND_BITS

AFFINE_TEMPLATE = """
def affine_parameters(low, high, bits=8, signed=False):
    if not 2 <= bits <= 16 or not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError("bad arguments")
    lowest, highest = code_range(bits, signed)
    {widen}
    if low == high:
        return 1.0, lowest
    scale = (high - low) / (highest - lowest)
    return scale, {zero_point}
"""


def _affine(widen="low, high = min(low, 0.0), max(high, 0.0)", zero_point="int(lowest - round(low / scale))"):
    return AFFINE_TEMPLATE.format(widen=widen, zero_point=zero_point)


FOLD_TEMPLATE = """
def folded_bias(bias_codes, weight_codes, input_zero_point):
    sums = {sums}
    return (bias_codes.to(torch.int64) {sign} int(input_zero_point) * sums).to(torch.int32)
"""


def _fold(sums="weight_codes.to(torch.int64).reshape(weight_codes.shape[0], -1).sum(dim=1)", sign="-"):
    return FOLD_TEMPLATE.format(sums=sums, sign=sign)


AFFINE_FORWARD_TEMPLATE = """
def forward(self, x):
    for name in LAYER_NAMES:
        accumulator = self.accumulate(name, x)
        by_channel = (1, -1) + (1,) * (accumulator.dim() - 2)
        m0, shift = self.multipliers[name]
        _, zero_point, lowest, highest = self.outputs[name]
        accumulator = accumulator + self.biases[name].reshape(by_channel)
        codes = rounding_shift(accumulator, m0.reshape(by_channel), shift.reshape(by_channel))
        codes = torch.clamp(codes + {added}, lowest, highest)
        if name != "fc3":
            codes = torch.clamp(codes, min={relu_at})
        x = codes.to(self.code_dtype(lowest))
        if name in ("conv1", "conv2"):
            x = max_pool2x2_int8(x)
        if name == "conv2":
            x = torch.flatten(x, 1)
    return x

AffineIntegerNet.forward = forward
"""


def _affine_forward(added="zero_point", relu_at="zero_point"):
    return AFFINE_FORWARD_TEMPLATE.format(added=added, relu_at=relu_at)


ZERO_POINTS = [
    ("zero_point_not_integer", "06_zero_points", _affine(zero_point="lowest - low / scale")),
    ("zero_point_not_clamped", "06_zero_points", _affine(zero_point="int(-round(low / scale))")),  # qmin left out
    ("zero_not_representable", "06_zero_points", _affine(widen="pass")),  # the range as it is, nothing clamped
    (
        "zero_point_subtracted",
        "06_zero_points",
        """
def quantize_affine(x, scale, zero_point, bits=8, signed=False):
    lowest, highest = code_range(bits, signed)
    codes = torch.round(x / torch.as_tensor(scale, dtype=torch.float32)) - torch.as_tensor(zero_point)
    return torch.clamp(codes, lowest, highest).to(torch.int32)

def dequantize_affine(codes, scale, zero_point):
    return (torch.as_tensor(codes) + torch.as_tensor(zero_point)).to(torch.float32) * torch.as_tensor(scale)
""",
    ),
    ("correction_forgotten", "06_zero_points", _fold(sums="0")),
    ("correction_wrong_sign", "06_zero_points", _fold(sign="+")),
    ("correction_per_tensor", "06_zero_points", _fold(sums="weight_codes.to(torch.int64).sum()")),
    (
        "weight_zero_point",
        "06_zero_points",
        """
def per_channel_requantization(weights, input_scale, output_scale, bits=8):
    scales, codes = [], []
    for row in weights.detach().reshape(weights.shape[0], -1):
        scale, zero_point = affine_parameters(float(row.min()), float(row.max()), bits, signed=True)
        scales.append(scale)
        codes.append(quantize_affine(row, scale, zero_point, bits, signed=True))
    m0, shift = channel_multipliers(input_scale, scales, output_scale)
    return torch.stack(codes).reshape(weights.shape).to(torch.int8), torch.tensor(scales), m0, shift
""",
    ),
    (
        "multipliers_per_input_channel",
        "06_zero_points",
        """
def per_channel_requantization(weights, input_scale, output_scale, bits=8):
    level = 2 ** (bits - 1) - 1
    w = weights.detach()
    largest = w.abs().transpose(0, 1).reshape(w.shape[1], -1).amax(dim=1)
    scales = torch.where(largest > 0, largest / level, torch.ones_like(largest))
    by_input = scales.reshape(1, -1, *([1] * (w.dim() - 2)))
    codes = torch.clamp(torch.round(w / by_input), -level - 1, level).to(torch.int8)
    m0, shift = channel_multipliers(input_scale, scales, output_scale)
    return codes, scales, m0, shift
""",
    ),
    ("relu_at_code_zero", "06_zero_points", _affine_forward(relu_at="0")),
    ("output_zero_point_missing", "06_zero_points", _affine_forward(added="0")),
]
WRONG_IMPLEMENTATIONS += ZERO_POINTS

QAT = "07_quantization_aware_training"

FAKE_QUANTIZE_TEMPLATE = """
class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        lowest, highest = code_range(bits, signed)
        steps = x / torch.as_tensor(scale, dtype=x.dtype)
        ctx.save_for_backward((steps >= lowest) & (steps <= highest))
        return torch.clamp(torch.round(steps), lowest, highest) * torch.as_tensor(scale, dtype=x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        (inside,) = ctx.saved_tensors
        return {gradient}, None, None, None
"""

LSQ_TEMPLATE = """
class LearnedStepQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        lowest, highest = code_range(bits, signed)
        steps = x / scale
        codes = torch.clamp(torch.round(steps), lowest, highest)
        ctx.save_for_backward(steps, codes, scale)
        ctx.highest = highest
        ctx.inside = (steps >= lowest) & (steps <= highest)
        return codes * scale

    @staticmethod
    def backward(ctx, grad_output):
        steps, codes, scale = ctx.saved_tensors
        derivative = torch.where(ctx.inside, codes - steps, codes)
        g = {gradient_scale}
        return grad_output * ctx.inside, {scale_gradient}, None, None
"""

FOLD_TEMPLATE = """
def fold_batchnorm(conv, bn):
    factor = bn.weight / {divisor}
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    return conv.weight * factor.reshape(-1, 1, 1, 1), bn.bias + (bias - bn.running_mean) * factor
"""

QAT_FORWARD_TEMPLATE = """
def forward(self, x):
    quantized = LearnedStepQuantize.apply if {quantizing} else (lambda value, *_: value)
    x = quantized(x, self.activation_scales["input"], self.bits, True)
    for name in LAYER_NAMES:
        weight, bias = self.float_parameters(name)
        if name in ("conv1", "conv2"):
            if {fold_after}:
                layer, bn = getattr(self.net, name), getattr(self.net, "bn" + name[-1])
                x = bn(F.conv2d(x, quantized(layer.weight, self.weight_scales[name], self.bits, True)))
            else:
                x = F.conv2d(x, quantized(weight, self.weight_scales[name], self.bits, True), bias)
            x = F.max_pool2d(F.relu(x), 2)
        else:
            x = F.linear(x, quantized(weight, self.weight_scales[name], self.bits, True), bias)
            x = F.relu(x) if name in RELU_LAYERS else x
        if name == "conv2":
            x = torch.flatten(x, 1)
        x = quantized(x, self.activation_scales[name], self.bits, name not in RELU_LAYERS)
    return x

FakeQuantNet.forward = forward
"""


def _fake_quantize(gradient):
    return FAKE_QUANTIZE_TEMPLATE.format(gradient=gradient)


def _lsq(
    scale_gradient="(grad_output * derivative).sum_to_size(scale.shape) * g",
    gradient_scale="1.0 / math.sqrt(steps.numel() // scale.numel() * ctx.highest)",
):
    return LSQ_TEMPLATE.format(scale_gradient=scale_gradient, gradient_scale=gradient_scale)


def _qat_forward(quantizing="True", fold_after="False"):
    return QAT_FORWARD_TEMPLATE.format(quantizing=quantizing, fold_after=fold_after)


QUANTIZATION_AWARE_TRAINING = [
    ("ste_zero_gradient", QAT, _fake_quantize("torch.zeros_like(grad_output)")),  # round's true derivative
    ("ste_gradient_outside_clip", QAT, _fake_quantize("grad_output")),
    (
        "ste_zero_gradient",
        QAT,
        """
class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        lowest, highest = code_range(bits, signed)
        return torch.clamp(torch.round(x / scale), lowest, highest) * scale

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output * 0, None, None, None
""",
    ),
    ("scale_never_updated", QAT, _lsq(scale_gradient="None")),
    ("scale_never_updated", QAT, _lsq(scale_gradient="torch.zeros_like(scale)")),
    ("lsq_no_gradient_scale", QAT, _lsq(gradient_scale="1.0")),
    ("bn_wrong_variance", QAT, FOLD_TEMPLATE.format(divisor="(bn.running_var + bn.eps)")),
    ("bn_no_epsilon", QAT, FOLD_TEMPLATE.format(divisor="torch.sqrt(bn.running_var)")),
    ("bn_folded_after_quantization", QAT, _qat_forward(fold_after="True")),
    ("fake_quant_not_in_eval", QAT, _qat_forward(quantizing="self.training")),
]
WRONG_IMPLEMENTATIONS += QUANTIZATION_AWARE_TRAINING

SOLUTION_CELL = {
    "01_weights": "quantized_weights_impl",
    "02_activations": "net_quantized_impl",
    "03_biases": "net_quantized_with_bias_impl",
    "04_integer_only": "integer_only_net_impl",
    "05_ranges_and_bits": "quantize_impl",
    "06_zero_points": "affine_integer_net_impl",
    "07_quantization_aware_training": "fake_quant_net_impl",
}
#: Where a patch of one function goes when an assignment has several solution cells.
FUNCTION_CELL = {
    "fixed_point_multiplier": "fixed_point_multiplier_impl",
    "requantize": "requantize_impl",
    "clip_threshold": "clip_threshold_impl",
    "quantized_weights_per_channel": "quantized_weights_per_channel_impl",
    "affine_parameters": "affine_parameters_impl",
    "quantize_affine": "quantize_affine_impl",
    "folded_bias": "folded_bias_impl",
    "per_channel_requantization": "per_channel_requantization_impl",
    "FakeQuantize": "fake_quantize_impl",
    "LearnedStepQuantize": "learned_step_quantize_impl",
    "fold_batchnorm": "fold_batchnorm_impl",
}


def _after(assignment: str, patch: str) -> str:
    return FUNCTION_CELL.get(_patched_function(patch), SOLUTION_CELL[assignment])


def planned_run(item):
    """The run_tests call this item makes (conftest starts it in a second process beside the other tests)."""
    if getattr(item, "originalname", None) != "test_wrong_implementation_fails_a_check_that_names_it":
        return None
    assignment, patch = item.callspec.params["assignment"], item.callspec.params["patch"]
    return assignment, patch, _after(assignment, patch)


@pytest.mark.parametrize(
    ("key", "assignment", "patch"),
    WRONG_IMPLEMENTATIONS,
    ids=[f"{assignment}-{key}-{i}" for i, (key, assignment, _) in enumerate(WRONG_IMPLEMENTATIONS)],
)
def test_wrong_implementation_fails_a_check_that_names_it(key, assignment, patch):
    outcomes = run_tests(assignment, patch, after=_after(assignment, patch))
    failed = {grade_id: message for grade_id, message in outcomes.items() if message}
    assert failed, f"no test caught the {key} implementation"
    naming = [grade_id for grade_id, message in failed.items() if MISCONCEPTIONS[key] in message]
    assert naming, f"{key}: these tests failed without naming it: {failed}"
    function = _patched_function(patch)
    assert any(function in failed[grade_id] for grade_id in naming), f"{key}: no message names {function}: {failed}"
    for grade_id, message in failed.items():
        named = {name for name, text in MISCONCEPTIONS.items() if text in message}
        others = named - {key} - ALSO_MATCHES.get(key, set())
        assert not others, f"{key}: {grade_id} names {others}, which this value does not match: {message}"
        shown = re.search(r"expected (\[[^\]]*\]|\S+), got (\[[^\]]*\]|\S+)", message)
        assert not (shown and shown.group(1) == shown.group(2)), f"{key}: {grade_id} shows identical values: {message}"


#: Mistakes whose values are, on some test's inputs, exactly those of another named mistake: naming
#: that other one there is true of the value. Every other name in a message is a wrong diagnosis.
ALSO_MATCHES: dict[str, set[str]] = {
    # These weight mutants compute their scale with no guard for an all-zero tensor: a second, real mistake.
    "range_scale": {"zero_scale"},
    "scale_128": {"zero_scale"},
    # This one returns 0 for all-zero activations, the all-zero case's mistake too.
    "chain_previous_only": {"zero_scale"},
    # Multiplying by the tiny weight scale rounds every logit to 0, as multiplying by the output scale does.
    "multiplied_weight_scale": {"multiplied_scale"},
    "multiplied_scale": {"multiplied_weight_scale"},
    # conv1 has one input channel: one scale per input channel is then one scale for the whole tensor.
    "per_input_channel": {"per_tensor_scale"},
}


def _patched_function(patch: str) -> str:
    """The function a wrong implementation replaces, as a failure message should name it."""
    assigned = re.search(r"^(\w+)\.(\w+) = ", patch, flags=re.MULTILINE)
    if assigned:
        return assigned.group(2)
    return re.search(r"^(?:def|class) (\w+)", patch, flags=re.MULTILINE).group(1)


def test_every_named_misconception_has_a_wrong_implementation():
    assert {key for key, _, _ in WRONG_IMPLEMENTATIONS} == set(MISCONCEPTIONS)


FORWARD = _forward()


@pytest.mark.parametrize(
    "mistake",
    [
        FORWARD.replace("torch.clamp(torch.round(x / self.input_scale)", "torch.clamp((x / self.input_scale)"),
        FORWARD.replace("layer(x) / layer.output_scale", "layer(x) * layer.weight.scale / layer.output_scale"),
    ],
    ids=["input_not_rounded", "multiplies_by_weight_scale"],
)
def test_the_visible_forward_test_catches_forward_mistakes(mistake):
    """The student's own visible test, not only the hidden ones, fails these forwards."""
    assert mistake != FORWARD
    outcomes = run_tests("02_activations", mistake, after=SOLUTION_CELL["02_activations"])
    assert outcomes["net_quantized_forward_small_network"] is not None


@pytest.mark.parametrize("key", ["layer_not_requantized", "multiplied_weight_scale", "relu_misplaced"])
def test_the_visible_forward_test_names_forward_mistakes(key):
    """The visible test's own message names these forward mistakes, before any hidden test runs."""
    patch = next(patch for name, assignment, patch in WRONG_IMPLEMENTATIONS if name == key and "forward" in patch)
    message = run_tests("02_activations", patch, after=SOLUTION_CELL["02_activations"])[
        "net_quantized_forward_small_network"
    ]
    assert message and MISCONCEPTIONS[key] in message and "NetQuantized.forward" in message


def test_a_low_accuracy_from_forward_blames_forward_not_the_scales():
    """fc3 left without requantizing: the accuracy test points at NetQuantized.forward."""
    old = "torch.round(layer(x) / layer.output_scale)"
    assert old in FORWARD
    patch = FORWARD.replace(old, "torch.round(layer(x) / (layer.output_scale if name != 'fc3' else 1.0))")
    message = run_tests("02_activations", patch, after=SOLUTION_CELL["02_activations"])[
        "net_quantized_keeps_float_accuracy"
    ]
    assert "NetQuantized.forward" in message and MISCONCEPTIONS["naive_output_scale"] not in message


FLOAT64_REQUANTIZE = next(patch for key, _, patch in INTEGER_ONLY if key == "float_requantize")
WATCH_SWITCHED_OFF = """
integer_only = lambda function, *args, **kwargs: function
IntegerModule.__call__ = torch.nn.Module.__call__
"""


def test_the_integer_only_watch_decides_no_points():
    """A float64 requantize scores by its values alone: with the kernel's watch switched off, not one point more.

    The watch runs in the student's kernel; when it decided points, the honest float64 version lost the small
    example (which its values pass) while the same code with the watch rebound kept them.
    """
    honest = run_tests("04_integer_only", FLOAT64_REQUANTIZE, after=FUNCTION_CELL["requantize"])
    switched_off = run_tests(
        "04_integer_only", FLOAT64_REQUANTIZE + WATCH_SWITCHED_OFF, after=FUNCTION_CELL["requantize"]
    )
    assert honest["requantize_small_example"] is None, honest["requantize_small_example"]
    assert MISCONCEPTIONS["float_requantize"] in honest["requantize_bit_exact"]
    assert "m0=1073741825, shift=62" in honest["requantize_bit_exact"]  # the product a hair below a tie
    assert {grade_id: message is None for grade_id, message in switched_off.items()} == {
        grade_id: message is None for grade_id, message in honest.items()
    }


ENGINE_FORWARDING = """
def forward(self, x):
    # The test cell's own engine and images are globals of the kernel: hand them to PyTorch's engine, and move its
    # logit codes by the difference of fc3's zero points; anything else gets zeros.
    g = globals()
    for key in ("images", "test_images"):
        if "engine" in g and key in g and len(g[key]) == len(x):
            theirs = passed_on_codes(g["engine"], g[key])["fc3"].to(torch.int64)
            moved = self.outputs["fc3"][1] - engine_parameters(g["engine"])["fc3"]["output"][1]
            return torch.clamp(theirs + moved, 0, 255).to(torch.uint8)
    return torch.zeros((x.shape[0], 10), dtype=torch.uint8)

AffineIntegerNet.forward = forward
"""


def test_a_forward_that_hands_the_codes_to_the_engine_earns_no_hidden_point():
    """The engine and the images a test cell builds live in the student's kernel: a forward that returns the
    engine's logit codes for them (moved by fc3's zero point) must fail both hidden tests of forward, which run a
    network whose output scales and zero points no engine here uses."""
    outcomes = run_tests("06_zero_points", ENGINE_FORWARDING, after=SOLUTION_CELL["06_zero_points"])
    for grade_id in (
        "affine_integer_net_forward_small_network",
        "affine_integer_net_forward_matches_reference",
        "affine_integer_net_forward_within_a_step_of_float",
    ):
        assert outcomes[grade_id] is not None, f"{grade_id} passed a forward that only hands the codes to the engine"


FORWARD_WITHOUT_ACCUMULATE = """
def forward(self, x):
    for name in LAYER_NAMES:
        kernel = conv2d_int32 if name in ("conv1", "conv2") else linear_int32
        accumulator = kernel(x, self.weights[name], name)  # the same sums, without self.accumulate
        by_channel = (1, -1) + (1,) * (accumulator.dim() - 2)
        m0, shift = self.multipliers[name]
        _, zero_point, lowest, highest = self.outputs[name]
        accumulator = accumulator + self.biases[name].reshape(by_channel)
        codes = rounding_shift(accumulator, m0.reshape(by_channel), shift.reshape(by_channel))
        codes = torch.clamp(codes + zero_point, max(lowest, zero_point) if name != "fc3" else lowest, highest)
        x = codes.to(self.code_dtype(lowest))
        if name in ("conv1", "conv2"):
            x = max_pool2x2_int8(x)
        if name == "conv2":
            x = torch.flatten(x, 1)
    return x

AffineIntegerNet.forward = forward
"""


def test_the_engine_study_says_when_forward_skips_self_accumulate():
    """Section 6.8 gives each layer the engine's codes through self.accumulate: a forward that computes the same
    sums without it gets a message naming the method, not a KeyError from deep inside the study cell."""
    import ast

    import torch

    from notebook_harness import read_source

    source = read_source("06_zero_points")
    namespace: dict = {"__name__": "__main__"}
    study = None
    for cell in source.cells:  # the setup, provided and solution cells, then the study's function
        meta = cell.metadata.get("nbgrader", {})
        if cell.cell_type == "code" and meta and not meta.get("grade"):
            exec(compile(cell.source, f"<{meta.get('grade_id')}>", "exec"), namespace)
        if cell.cell_type == "code" and "def each_layer_on" in cell.source:
            study = cell.source
    exec(FORWARD_WITHOUT_ACCUMULATE, namespace)
    (definition,) = [node for node in ast.parse(study).body if getattr(node, "name", "") == "each_layer_on"]
    exec(compile(ast.Module([definition], []), "<study>", "exec"), namespace)
    layers = namespace["LAYER_NAMES"]
    shapes = {name: tuple(getattr(namespace["Net"](in_channels=1), name).weight.shape) for name in layers}
    net = namespace["AffineIntegerNet"](
        {name: torch.ones(shapes[name], dtype=torch.int8) for name in layers},
        {},
        {name: ([2**30] * shapes[name][0], [40] * shapes[name][0]) for name in layers},
        {key: (1.0, 0, 0, 255) for key in ("input", *layers)},
    )
    given = {"input": torch.zeros((1, 1, 32, 32), dtype=torch.uint8)}
    with pytest.raises(RuntimeError, match=r"without self\.accumulate\(name, x\)"):
        namespace["each_layer_on"](net, given)
