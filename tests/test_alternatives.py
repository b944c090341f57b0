"""No correct student loses a point: honest alternative implementations earn every point.

Each alternative follows its function's docstring exactly, as a careful student would write it,
and differs from the solution only in precision (float32 or float64), library (numpy or torch)
or loop structure. Patched into the solution notebook right after the function's solution cell,
it must pass every test of the notebook, and in particular the tests that exercise the function.
"""

import pytest

from notebook_harness import run_tests

# ---------------------------------------------------------------------------------------------
# Notebook 04: fixed_point_multiplier, requantize, IntegerOnlyNet.forward
# ---------------------------------------------------------------------------------------------

FIXED_POINT_MULTIPLIER = {
    "frexp": """
def fixed_point_multiplier(real_multiplier, bits=31):
    m = float(real_multiplier)
    if math.isnan(m) or math.isinf(m) or m < 0:
        raise ValueError("bad multiplier")
    if m == 0:
        return 0, 0
    mantissa, exponent = math.frexp(m)
    shift = bits - exponent
    m0 = round(mantissa * 2**bits)
    if m0 == 2**bits:
        m0 //= 2
        shift -= 1
    if shift < 1:
        raise ValueError("multiplier too large")
    return m0, shift
""",
    "doubling_loop": """
def fixed_point_multiplier(real_multiplier, bits=31):
    m = float(real_multiplier)
    if not math.isfinite(m) or m < 0:
        raise ValueError("bad multiplier")
    if m == 0:
        return 0, 0
    scaled, shift = m, 0
    while scaled < 2 ** (bits - 1):
        scaled *= 2
        shift += 1
    while scaled >= 2**bits:
        scaled /= 2
        shift -= 1
    m0 = round(scaled)
    if m0 == 2**bits:
        m0, shift = m0 // 2, shift - 1
    if shift < 1:
        raise ValueError("multiplier too large")
    return int(m0), int(shift)
""",
    "exact_fraction": """
from fractions import Fraction

def fixed_point_multiplier(real_multiplier, bits=31):
    m = float(real_multiplier)
    if not np.isfinite(m) or m < 0:
        raise ValueError("bad multiplier")
    if m == 0:
        return 0, 0
    exact = Fraction(m)
    shift = bits - 1 - math.floor(math.log2(m))
    while exact * 2**shift < 2 ** (bits - 1):
        shift += 1
    while exact * 2**shift >= 2**bits:
        shift -= 1
    m0 = round(exact * 2**shift)  # Fraction rounds half to even
    if m0 == 2**bits:
        m0, shift = m0 // 2, shift - 1
    if shift < 1:
        raise ValueError("multiplier too large")
    return int(m0), int(shift)
""",
}

REQUANTIZE = {
    "int64_floor_division": """
def requantize(accumulator, m0, shift):
    if shift > 62:
        return torch.zeros(accumulator.shape, dtype=torch.int8)
    product = accumulator.to(torch.int64) * int(m0)
    if shift == 0:
        return torch.clamp(product, -128, 127).to(torch.int8)
    half = 2 ** (shift - 1)
    magnitude = torch.div(torch.abs(product) + half, 2**shift, rounding_mode="floor")
    rounded = torch.sign(product) * magnitude
    return torch.clamp(rounded, -128, 127).to(torch.int8)
""",
    "python_int_loop": """
def requantize(accumulator, m0, shift):
    results = []
    for value in accumulator.reshape(-1).tolist():
        product = int(value) * m0
        if shift == 0:
            rounded = product
        else:
            magnitude = (abs(product) + 2 ** (shift - 1)) // 2**shift
            rounded = magnitude if product >= 0 else -magnitude
        results.append(min(max(rounded, -128), 127))
    return torch.tensor(results, dtype=torch.int8).reshape(accumulator.shape)
""",
    "int64_floor_then_fix": """
def requantize(accumulator, m0, shift):
    product = accumulator.to(torch.int64) * m0
    if shift > 62:
        return torch.zeros_like(accumulator, dtype=torch.int8)
    if shift > 0:
        floor = product >> shift
        remainder = product - (floor << shift)
        half = 1 << (shift - 1)
        # floor, then up when the remainder is above half, or exactly half on a positive product
        up = (remainder > half) | ((remainder == half) & (product > 0))
        product = floor + up.to(torch.int64)
    return torch.clamp(product, -128, 127).to(torch.int8)
""",
}

INTEGER_FORWARD = {
    "unrolled_layers": """
def forward(self, x):
    def step(name, accumulator):
        if name in self.biases:
            accumulator = accumulator + self.biases[name]
        m0, shift = self.multipliers[name]
        return requantize(accumulator, m0, shift)

    x = max_pool2x2_int8(relu_int8(step("conv1", conv2d_int32(x, self.weights["conv1"], "conv1"))))
    x = max_pool2x2_int8(relu_int8(step("conv2", conv2d_int32(x, self.weights["conv2"], "conv2"))))
    x = x.reshape(x.shape[0], -1)
    x = relu_int8(step("fc1", linear_int32(x, self.weights["fc1"], "fc1")))
    x = relu_int8(step("fc2", linear_int32(x, self.weights["fc2"], "fc2")))
    return step("fc3", linear_int32(x, self.weights["fc3"], "fc3"))

IntegerOnlyNet.forward = forward
""",
    "int64_bias_own_relu_pool": """
def forward(self, x):
    for name in LAYER_NAMES:
        accumulator = self.accumulate(name, x).to(torch.int64)
        if name in self.biases:
            accumulator = accumulator + self.biases[name].to(torch.int64)
        x = requantize(accumulator.to(torch.int32), *self.multipliers[name])
        if name != "fc3":
            x = torch.clamp(x, min=0)
        if name in ("conv1", "conv2"):
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).amax(dim=(3, 5))
        if name == "conv2":
            x = x.reshape(x.shape[0], -1)
    return x

IntegerOnlyNet.forward = forward
""",
    "loop_over_images": """
def forward(self, x):
    logits = []
    for image in x:
        y = image.unsqueeze(0)
        for name in LAYER_NAMES:
            accumulator = self.accumulate(name, y)
            if name in self.biases:
                accumulator = accumulator + self.biases[name]
            y = requantize(accumulator, *self.multipliers[name])
            if name in ("conv1", "conv2"):
                y = max_pool2x2_int8(relu_int8(y))
            elif name != "fc3":
                y = relu_int8(y)
            if name == "conv2":
                y = torch.flatten(y, 1)
        logits.append(y[0])
    return torch.stack(logits)

IntegerOnlyNet.forward = forward
""",
}

# ---------------------------------------------------------------------------------------------
# Notebook 05: quantize, clip_threshold, quantized_weights_per_channel
# ---------------------------------------------------------------------------------------------

_QUANTIZE_CHECKS = """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError("bits")
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
"""

QUANTIZE = {
    "float64_numpy": f"""
def quantize(x, scale, bits, signed):
{_QUANTIZE_CHECKS}
    s = np.asarray(scale.detach().numpy() if isinstance(scale, torch.Tensor) else scale, dtype=np.float64)
    if not (np.all(np.isfinite(s)) and np.all(s > 0)):
        raise ValueError("scale")
    values = np.asarray(x.detach().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    return torch.from_numpy(np.clip(np.round(values / s), low, high).astype(np.float32))
""",
    "float32_torch": f"""
def quantize(x, scale, bits, signed):
{_QUANTIZE_CHECKS}
    s = scale.to(torch.float32) if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=torch.float32)
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError("scale")
    return (x.to(torch.float32) / s).round().clamp(low, high)
""",
    "float64_torch_python_scale": f"""
def quantize(x, scale, bits, signed):
{_QUANTIZE_CHECKS}
    s = torch.as_tensor(scale, dtype=torch.float64)
    if torch.isnan(s).any() or torch.isinf(s).any() or (s <= 0).any():
        raise ValueError("scale")
    codes = torch.round(x.to(torch.float64) / s)
    return torch.clamp(codes, low, high).to(torch.float32)
""",
}

CLIP_THRESHOLD = {
    "float64_numpy_vectorised": """
def clip_threshold(values, method, bits=8, signed=True, percentile=99.99, k=3.0, candidates=100):
    if method not in ("max", "percentile", "sigma", "mse"):
        raise ValueError(method)
    if isinstance(values, torch.Tensor):
        values = values.detach().numpy()
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError("values")
    magnitudes = np.abs(x)
    largest = float(magnitudes.max())
    if largest == 0.0:
        return 0.0
    if method == "max":
        return largest
    if method == "percentile":
        return float(np.percentile(magnitudes, percentile))
    if method == "sigma":
        return float(min(magnitudes.mean() + k * magnitudes.std(), largest))
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    thresholds = largest * np.arange(1, candidates + 1) / candidates
    scales = (thresholds / largest_level(bits, signed))[:, None]
    dequantized = np.clip(np.round(x[None, :] / scales), low, high) * scales
    errors = ((dequantized - x[None, :]) ** 2).mean(axis=1)
    return float(thresholds[int(np.argmin(errors))])
""",
    "float32_torch_loop": """
def clip_threshold(values, method, bits=8, signed=True, percentile=99.99, k=3.0, candidates=100):
    if method not in METHODS:
        raise ValueError(method)
    x = torch.as_tensor(values).to(torch.float32).flatten()
    if x.numel() == 0 or not bool(torch.isfinite(x).all()):
        raise ValueError("values")
    magnitudes = x.abs()
    largest = magnitudes.max()
    if float(largest) == 0.0:
        return 0.0
    if method == "max":
        return float(largest)
    if method == "percentile":
        return float(torch.quantile(magnitudes, percentile / 100))
    if method == "sigma":
        return float(torch.minimum(magnitudes.mean() + k * magnitudes.std(unbiased=False), largest))
    best, best_error = None, None
    for i in range(1, candidates + 1):
        threshold = largest * i / candidates
        scale = threshold / largest_level(bits, signed)
        error = ((quantize(x, scale, bits, signed) * scale - x) ** 2).mean()
        if best_error is None or error < best_error:
            best, best_error = threshold, error
    return float(best)
""",
}

PER_CHANNEL = {
    "loop_over_channels": """
def quantized_weights_per_channel(weights, bits=8):
    level = 2 ** (bits - 1) - 1
    codes = torch.empty_like(weights, dtype=torch.float32)
    scales = torch.empty(weights.shape[0], dtype=torch.float32)
    for c in range(weights.shape[0]):
        largest = weights[c].abs().max()
        scales[c] = largest / level if largest > 0 else 1.0
        codes[c] = quantize(weights[c], scales[c], bits, True)
    return codes, scales
""",
    "float64_numpy": """
def quantized_weights_per_channel(weights, bits=8):
    level = 2 ** (bits - 1) - 1
    w = weights.detach().numpy().astype(np.float64)
    largest = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scales = np.where(largest > 0, largest / level, 1.0)
    codes = np.clip(np.round(w / scales.reshape(-1, *[1] * (w.ndim - 1))), -level - 1, level)
    return torch.from_numpy(codes.astype(np.float32)), torch.from_numpy(scales.astype(np.float32))
""",
    "float64_torch_python_scales": """
def quantized_weights_per_channel(weights, bits=8):
    level = 2 ** (bits - 1) - 1
    scales, rows = [], []
    for channel in weights.detach():
        largest = float(channel.abs().max())
        scale = largest / level if largest > 0 else 1.0
        scales.append(scale)
        rows.append(quantize(channel, scale, bits, True))
    return torch.stack(rows), torch.tensor(scales, dtype=torch.float32)
""",
}

# ---------------------------------------------------------------------------------------------
# Notebook 07: FakeQuantize, LearnedStepQuantize, fold_batchnorm, FakeQuantNet.forward, qat_step
# ---------------------------------------------------------------------------------------------

FAKE_QUANTIZE = {
    "float64_inside": """
class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        wide_scale = torch.as_tensor(scale, dtype=torch.float64)
        steps = x.to(torch.float64) / wide_scale
        ctx.mask = (steps >= low) & (steps <= high)
        return (torch.clamp(torch.round(steps), low, high) * wide_scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        return torch.where(ctx.mask, grad_output, torch.zeros_like(grad_output)), None, None, None
""",
    "mask_on_the_values": """
class FakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        low, high = code_range(bits, signed)
        scale = torch.as_tensor(scale, dtype=x.dtype)
        ctx.save_for_backward(x, scale)
        ctx.low, ctx.high = low, high
        return torch.round(x / scale).clamp(low, high) * scale

    @staticmethod
    def backward(ctx, grad_output):
        x, scale = ctx.saved_tensors
        keep = (x >= ctx.low * scale) & (x <= ctx.high * scale)
        return grad_output * keep.to(grad_output.dtype), None, None, None
""",
}

LEARNED_STEP_QUANTIZE = {
    "float64": """
class LearnedStepQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        low, high = code_range(bits, signed)
        v = x.to(torch.float64) / scale.to(torch.float64)
        q = v.round().clamp(low, high)
        ctx.save_for_backward(v, q, scale)
        ctx.high, ctx.low = high, low
        return (q * scale.to(torch.float64)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output):
        v, q, scale = ctx.saved_tensors
        inside = (v >= ctx.low) & (v <= ctx.high)
        d = torch.where(v < ctx.low, float(ctx.low), torch.where(v > ctx.high, float(ctx.high), q - v))
        n = v.numel() / scale.numel()
        total = (grad_output.to(torch.float64) * d).sum_to_size(scale.shape) / math.sqrt(n * ctx.high)
        return grad_output * inside.to(grad_output.dtype), total.to(scale.dtype), None, None
""",
    "reduce_by_hand": """
class LearnedStepQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, bits, signed):
        low, high = code_range(bits, signed)
        ctx.save_for_backward(x, scale)
        ctx.low, ctx.high = low, high
        return torch.clamp(torch.round(x / scale), low, high) * scale

    @staticmethod
    def backward(ctx, grad_output):
        x, scale = ctx.saved_tensors
        v = x / scale
        below, above = v < ctx.low, v > ctx.high
        d = (torch.round(v) - v).masked_fill(below, ctx.low).masked_fill(above, ctx.high)
        product = grad_output * d
        # sum over every dimension along which scale was broadcast: the leading ones, and those where it has size 1
        extra = product.dim() - scale.dim()
        dims = list(range(extra)) + [extra + i for i, size in enumerate(scale.shape) if size == 1]
        summed = product.sum(dim=dims, keepdim=True) if dims else product
        g = 1.0 / math.sqrt((x.numel() // scale.numel()) * ctx.high)
        return grad_output * ~(below | above), (summed * g).reshape(scale.shape), None, None
""",
}

FOLD_BATCHNORM = {
    "float64": """
def fold_batchnorm(conv, bn):
    std = torch.sqrt(bn.running_var.double() + bn.eps)
    factor = (bn.weight.double() / std)
    bias = torch.zeros(conv.out_channels, dtype=torch.float64) if conv.bias is None else conv.bias.double()
    weight = conv.weight.double() * factor[:, None, None, None]
    return weight.float(), (bn.bias.double() + factor * (bias - bn.running_mean.double())).float()
""",
    "rsqrt": """
def fold_batchnorm(conv, bn):
    factor = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * factor.view(-1, *([1] * (conv.weight.dim() - 1)))
    bias = bn.bias - bn.running_mean * factor
    if conv.bias is not None:
        bias = bias + conv.bias * factor
    return weight, bias
""",
}

FAKE_QUANT_FORWARD = {
    "modules_and_dicts": """
def forward(self, x):
    after = {
        "conv1": lambda y: F.max_pool2d(F.relu(y), 2),
        "conv2": lambda y: torch.flatten(F.max_pool2d(F.relu(y), 2), 1),
        "fc1": F.relu,
        "fc2": F.relu,
        "fc3": lambda y: y,
    }
    x = LearnedStepQuantize.apply(x, self.activation_scales["input"], self.bits, True)
    for name in LAYER_NAMES:
        weight, bias = self.float_parameters(name)
        weight = LearnedStepQuantize.apply(weight, self.weight_scales[name], self.bits, True)
        y = F.conv2d(x, weight, bias) if weight.dim() == 4 else F.linear(x, weight, bias)
        x = LearnedStepQuantize.apply(after[name](y), self.activation_scales[name], self.bits, name == "fc3")
    return x

FakeQuantNet.forward = forward
""",
    "pool_after_quantizing": """
def forward(self, x):
    q = LearnedStepQuantize.apply
    x = q(x, self.activation_scales["input"], self.bits, True)
    for name in LAYER_NAMES:
        weight, bias = self.float_parameters(name)
        w = q(weight, self.weight_scales[name], self.bits, True)
        if name.startswith("conv"):
            # max pooling commutes with the (monotone) quantizer
            x = F.max_pool2d(q(F.relu(F.conv2d(x, w, bias)), self.activation_scales[name], self.bits, False), 2)
            if name == "conv2":
                x = x.reshape(x.shape[0], -1)
        else:
            y = F.linear(x, w, bias)
            x = q(F.relu(y) if name != "fc3" else y, self.activation_scales[name], self.bits, name == "fc3")
    return x

FakeQuantNet.forward = forward
""",
}

QAT_STEP = {
    "zero_grad_after": """
def qat_step(model, images, labels, optimizer):
    model.train(True)
    loss = nn.CrossEntropyLoss()(model(images), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
""",
    "log_softmax": """
def qat_step(model, images, labels, optimizer):
    model.train()
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            parameter.grad = None
    loss = F.nll_loss(F.log_softmax(model(images), dim=1), labels)
    loss.backward()
    optimizer.step()
    return loss.item()
""",
}

# ---------------------------------------------------------------------------------------------
# Notebook 06: affine_parameters, quantize_affine and dequantize_affine, folded_bias,
# channel_multipliers and per_channel_requantization, AffineIntegerNet.forward
# ---------------------------------------------------------------------------------------------

AFFINE_PARAMETERS = {
    "float32_torch": """
def affine_parameters(low, high, bits=8, signed=False):
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError("bits")
    ends = torch.tensor([low, high], dtype=torch.float32)
    if not bool(torch.isfinite(ends).all()) or low > high:
        raise ValueError("range")
    lowest, highest = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    low, high = torch.clamp(ends[0], max=0.0), torch.clamp(ends[1], min=0.0)
    if bool(low == high):
        return 1.0, lowest
    scale = (high - low) / (highest - lowest)
    return float(scale), int(lowest - torch.round(low / scale))
""",
    "float64_numpy": """
def affine_parameters(low, high, bits=8, signed=False):
    if type(bits) is not int or bits < 2 or bits > 16:
        raise ValueError("bits")
    if np.isnan(low) or np.isnan(high) or np.isinf(low) or np.isinf(high) or low > high:
        raise ValueError("range")
    lowest, highest = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    low, high = np.float64(min(low, 0.0)), np.float64(max(high, 0.0))
    if high - low == 0:
        return 1.0, lowest
    scale = (high - low) / (highest - lowest)
    return float(scale), int(lowest + np.round(-low / scale))
""",
}

QUANTIZE_AFFINE = {
    "float64_numpy": """
def quantize_affine(x, scale, zero_point, bits=8, signed=False):
    lowest, highest = code_range(bits, signed)
    values = np.asarray(x, dtype=np.float64)
    steps = np.round(values / np.asarray(scale, dtype=np.float64)) + np.asarray(zero_point)
    return torch.from_numpy(np.clip(steps, lowest, highest).astype(np.int32))

def dequantize_affine(codes, scale, zero_point):
    codes = np.asarray(codes, dtype=np.float64)
    return torch.from_numpy((np.asarray(scale) * (codes - np.asarray(zero_point))).astype(np.float32))
""",
    "float32_torch": """
def quantize_affine(x, scale, zero_point, bits=8, signed=False):
    lowest, highest = code_range(bits, signed)
    codes = (x.float() / torch.as_tensor(scale).float()).round() + torch.as_tensor(zero_point).float()
    return codes.clamp(lowest, highest).to(torch.int32)

def dequantize_affine(codes, scale, zero_point):
    return (codes.float() - torch.as_tensor(zero_point).float()) * torch.as_tensor(scale).float()
""",
}

FOLDED_BIAS = {
    "float32_torch": """
def folded_bias(bias_codes, weight_codes, input_zero_point):
    sums = weight_codes.float().flatten(1).sum(dim=1)
    return (bias_codes.float() - float(input_zero_point) * sums).round().to(torch.int32)
""",
    "python_loop": """
def folded_bias(bias_codes, weight_codes, input_zero_point):
    folded = []
    for channel in range(weight_codes.shape[0]):
        total = sum(int(code) for code in weight_codes[channel].flatten().tolist())
        folded.append(int(bias_codes[channel]) - int(input_zero_point) * total)
    return torch.tensor(folded, dtype=torch.int32)
""",
}

PER_CHANNEL_REQUANTIZATION = {
    "float32_torch": """
def channel_multipliers(input_scale, weight_scales, output_scale):
    real = torch.as_tensor(weight_scales, dtype=torch.float32) * input_scale / output_scale
    pairs = [fixed_point_multiplier(float(value)) for value in real]
    return torch.tensor([m for m, _ in pairs]), torch.tensor([s for _, s in pairs])

def per_channel_requantization(weights, input_scale, output_scale, bits=8):
    level = 2 ** (bits - 1) - 1
    largest = weights.detach().flatten(1).abs().max(dim=1).values
    scales = torch.where(largest > 0, largest / level, torch.ones_like(largest))
    shaped = scales.view(-1, *([1] * (weights.dim() - 1)))
    codes = torch.clamp(torch.round(weights.detach() / shaped), -level - 1, level).to(torch.int8)
    return (codes, scales, *channel_multipliers(input_scale, scales, output_scale))
""",
    "float64_numpy_loop": """
def channel_multipliers(input_scale, weight_scales, output_scale):
    m0s, shifts = [], []
    for scale in np.asarray(weight_scales, dtype=np.float64):
        m0, shift = fixed_point_multiplier(float(np.float64(input_scale) * scale / np.float64(output_scale)))
        m0s.append(m0)
        shifts.append(shift)
    return torch.tensor(m0s, dtype=torch.int64), torch.tensor(shifts, dtype=torch.int64)

def per_channel_requantization(weights, input_scale, output_scale, bits=8):
    level = 2 ** (bits - 1) - 1
    w = weights.detach().numpy().astype(np.float64)
    scales, codes = [], []
    for channel in w:
        largest = np.abs(channel).max()
        scale = largest / level if largest > 0 else 1.0
        scales.append(scale)
        codes.append(np.clip(np.round(channel / scale), -level - 1, level))
    m0, shift = channel_multipliers(input_scale, scales, output_scale)
    return torch.from_numpy(np.stack(codes).astype(np.int8)), torch.tensor(scales), m0, shift
""",
}

AFFINE_FORWARD = {
    "channel_by_channel": """
def forward(self, x):
    for name in LAYER_NAMES:
        accumulator = self.accumulate(name, x)
        m0, shift = self.multipliers[name]
        _, zero_point, lowest, highest = self.outputs[name]
        channels = []
        for c in range(accumulator.shape[1]):
            rounded = rounding_shift(accumulator[:, c] + self.biases[name][c], int(m0[c]), int(shift[c]))
            floor = max(lowest, zero_point) if name != "fc3" else lowest  # the ReLU and the saturation at once
            channels.append(torch.clamp(rounded + zero_point, floor, highest))
        x = torch.stack(channels, dim=1).to(torch.uint8 if lowest >= 0 else torch.int8)
        if name in ("conv1", "conv2"):
            x = max_pool2x2_int8(x)
        if name == "conv2":
            x = x.reshape(x.shape[0], -1)
    return x

AffineIntegerNet.forward = forward
""",
    "unrolled_int64": """
def forward(self, x):
    def step(name, x, relu):
        accumulator = self.accumulate(name, x).to(torch.int64)
        view = [1, -1] + [1] * (accumulator.dim() - 2)
        m0, shift = (value.view(view) for value in self.multipliers[name])
        _, zero_point, lowest, highest = self.outputs[name]
        codes = rounding_shift(accumulator + self.biases[name].to(torch.int64).view(view), m0, shift) + zero_point
        codes = codes.clamp(lowest, highest)
        if relu:
            codes = torch.maximum(codes, torch.tensor(zero_point))
        return codes.to(self.code_dtype(lowest))

    x = max_pool2x2_int8(step("conv1", x, True))
    x = max_pool2x2_int8(step("conv2", x, True)).flatten(1)
    x = step("fc1", x, True)
    x = step("fc2", x, True)
    return step("fc3", x, False)

AffineIntegerNet.forward = forward
""",
}

# function: (assignment, solution cell to patch after, its alternatives, the tests that exercise it)
FUNCTIONS = {
    "fixed_point_multiplier": (
        "04_integer_only",
        "fixed_point_multiplier_impl",
        FIXED_POINT_MULTIPLIER,
        (
            "fixed_point_multiplier_small_example",
            "fixed_point_multiplier_edge_cases",
            "fixed_point_multiplier_error_bound",
            "integer_only_net_agrees_with_float_requantized",
        ),
    ),
    "requantize": (
        "04_integer_only",
        "requantize_impl",
        REQUANTIZE,
        (
            "requantize_small_example",
            "requantize_bit_exact",
            "integer_only_net_forward_small_network",
            "integer_only_net_forward_matches_reference",
            "integer_only_net_agrees_with_float_requantized",
        ),
    ),
    "IntegerOnlyNet.forward": (
        "04_integer_only",
        "integer_only_net_impl",
        INTEGER_FORWARD,
        (
            "integer_only_net_forward_small_network",
            "integer_only_net_forward_matches_reference",
            "integer_only_net_agrees_with_float_requantized",
        ),
    ),
    "quantize": (
        "05_ranges_and_bits",
        "quantize_impl",
        QUANTIZE,
        (
            "quantize_small_example",
            "quantize_edge_cases",
            "quantize_every_width",
            "clip_threshold_small_example",
            "clip_threshold_mse_search",
            "quantized_weights_per_channel_small_example",
            "quantized_weights_per_channel_edge_cases",
            "quantized_weights_per_channel_trained_layers",
        ),
    ),
    "clip_threshold": (
        "05_ranges_and_bits",
        "clip_threshold_impl",
        CLIP_THRESHOLD,
        (
            "clip_threshold_small_example",
            "clip_threshold_definitions",
            "clip_threshold_mse_search",
            "clip_threshold_edge_cases",
        ),
    ),
    "quantized_weights_per_channel": (
        "05_ranges_and_bits",
        "quantized_weights_per_channel_impl",
        PER_CHANNEL,
        (
            "quantized_weights_per_channel_small_example",
            "quantized_weights_per_channel_edge_cases",
            "quantized_weights_per_channel_trained_layers",
        ),
    ),
    "affine_parameters": (
        "06_zero_points",
        "affine_parameters_impl",
        AFFINE_PARAMETERS,
        ("affine_parameters_small_example", "affine_parameters_edge_cases", "affine_parameters_zero_is_exact"),
    ),
    "quantize_affine": (
        "06_zero_points",
        "quantize_affine_impl",
        QUANTIZE_AFFINE,
        ("quantize_affine_small_example", "quantize_affine_rows_ties_and_widths"),
    ),
    "folded_bias": (
        "06_zero_points",
        "folded_bias_impl",
        FOLDED_BIAS,
        (
            "folded_bias_small_example",
            "folded_bias_convolution_and_wide_layer",
            "affine_integer_net_forward_small_network",
            "affine_integer_net_forward_matches_reference",
            "affine_integer_net_forward_within_a_step_of_float",
        ),
    ),
    "per_channel_requantization": (
        "06_zero_points",
        "per_channel_requantization_impl",
        PER_CHANNEL_REQUANTIZATION,
        (
            "per_channel_requantization_small_example",
            "per_channel_requantization_trained_layers",
            "affine_integer_net_forward_matches_reference",
            "affine_integer_net_forward_within_a_step_of_float",
        ),
    ),
    "FakeQuantize": (
        "07_quantization_aware_training",
        "fake_quantize_impl",
        FAKE_QUANTIZE,
        ("fake_quantize_small_example", "fake_quantize_every_width"),
    ),
    "LearnedStepQuantize": (
        "07_quantization_aware_training",
        "learned_step_quantize_impl",
        LEARNED_STEP_QUANTIZE,
        (
            "learned_step_quantize_small_example",
            "learned_step_quantize_against_pytorch",
            "fake_quant_net_forward_matches_reference",
            "qat_step_trains_weights_and_scales",
        ),
    ),
    "fold_batchnorm": (
        "07_quantization_aware_training",
        "fold_batchnorm_impl",
        FOLD_BATCHNORM,
        ("fold_batchnorm_small_example", "fold_batchnorm_trained_network", "fake_quant_net_forward_matches_reference"),
    ),
    "FakeQuantNet.forward": (
        "07_quantization_aware_training",
        "fake_quant_net_impl",
        FAKE_QUANT_FORWARD,
        (
            "fake_quant_net_forward_small_example",
            "fake_quant_net_forward_matches_reference",
            "qat_step_trains_weights_and_scales",
        ),
    ),
    "qat_step": (
        "07_quantization_aware_training",
        "fake_quant_net_impl",
        QAT_STEP,
        ("qat_step_trains_weights_and_scales",),
    ),
    "AffineIntegerNet.forward": (
        "06_zero_points",
        "affine_integer_net_impl",
        AFFINE_FORWARD,
        (
            "affine_integer_net_forward_small_network",
            "affine_integer_net_forward_matches_reference",
            "affine_integer_net_forward_within_a_step_of_float",
        ),
    ),
}

# Notebooks 01 to 03: a float64 alternative for quantized_weights, the scales and forward of notebook 2,
# and quantized_bias.
EARLIER = {
    "quantized_weights": (
        "01_weights",
        "quantized_weights_impl",
        {
            "float64_numpy": """
def quantized_weights(weights):
    w = weights.detach().numpy().astype(np.float64)
    largest = float(np.abs(w).max())
    scale = largest / 127 if largest > 0 else 1.0
    return torch.from_numpy(np.clip(np.round(w / scale), -128, 127).astype(np.float32)), scale
""",
        },
        (
            "quantized_weights_small_example",
            "quantized_weights_mostly_negative",
            "quantized_weights_all_zero",
            "quantized_weights_single_element",
            "quantized_weights_trained_layers",
            "quantized_weights_keeps_dtype_and_shape",
        ),
    ),
    "net_quantized_scales_and_forward": (
        "02_activations",
        "net_quantized_impl",
        {
            "float64": """
def float64_input_scale(pixels):
    largest = float(np.max(np.abs(np.asarray(pixels, dtype=np.float64))))
    return largest / 127 if largest > 0 else 1.0

def float64_activations(activations, s_w, s_initial_input, ss):
    chain = float(s_w) * float(s_initial_input)
    for weight_scale, output_scale in ss:
        chain *= float(weight_scale) * float(output_scale)
    largest = float(np.max(np.abs(np.asarray(activations, dtype=np.float64) / chain)))
    return largest / 127 if largest > 0 else 1.0

def float64_forward(self, x):
    x = torch.clamp(torch.round(x.double() / self.input_scale), -128, 127).float()
    for name in LAYER_NAMES:
        layer = getattr(self, name)
        x = torch.clamp(torch.round(layer(x).double() / layer.output_scale), -128, 127).float()
        if name in ("conv1", "conv2"):
            x = self.pool(F.relu(x))
        elif name != "fc3":
            x = F.relu(x)
        if name == "conv2":
            x = torch.flatten(x, 1)
    return x

NetQuantized.quantize_initial_input = staticmethod(float64_input_scale)
NetQuantized.quantize_activations = staticmethod(float64_activations)
NetQuantized.forward = float64_forward
""",
            "float32_torch": """
def float32_activations(activations, s_w, s_initial_input, ss):
    chain = torch.tensor(s_w, dtype=torch.float32) * torch.tensor(s_initial_input, dtype=torch.float32)
    for weight_scale, output_scale in ss:
        chain = chain * torch.tensor(weight_scale * output_scale, dtype=torch.float32)
    largest = float((torch.as_tensor(activations, dtype=torch.float32) / chain).abs().max())
    return largest / 127 if largest > 0 else 1.0

NetQuantized.quantize_activations = staticmethod(float32_activations)
""",
        },
        (
            "quantize_initial_input_small_example",
            "quantize_initial_input_edge_cases",
            "quantize_activations_first_layer",
            "quantize_activations_chained_scale",
            "quantize_activations_hidden_cases",
            "net_quantized_forward_small_network",
            "net_quantized_forward_matches_reference",
            "net_quantized_keeps_float_accuracy",
        ),
    ),
    "quantized_bias": (
        "03_biases",
        "net_quantized_with_bias_impl",
        {
            "float64_numpy": """
def float64_quantized_bias(bias, s_w, s_initial_input, ss):
    scale = float(s_w) * float(s_initial_input)
    for weight_scale, output_scale in ss:
        scale *= float(weight_scale) * float(output_scale)
    codes = np.round(bias.detach().numpy().astype(np.float64) / scale)
    return torch.from_numpy(np.clip(codes, -(2**31), 2**31 - 1)).to(bias.dtype)

NetQuantizedWithBias.quantized_bias = staticmethod(float64_quantized_bias)
""",
        },
        (
            "quantized_bias_small_example",
            "quantized_bias_chained_scale",
            "quantized_bias_clamps_to_int32",
            "quantized_bias_hidden_cases",
            "net_quantized_with_bias_forward_matches_reference",
            "net_quantized_with_bias_keeps_float_accuracy",
        ),
    ),
}

CASES = [
    pytest.param(assignment, cell, patch, tests, id=f"{function}-{name}")
    for function, (assignment, cell, alternatives, tests) in {**FUNCTIONS, **EARLIER}.items()
    for name, patch in alternatives.items()
]


def test_every_function_has_two_alternatives():
    assert all(len(alternatives) >= 2 for _, _, alternatives, _ in FUNCTIONS.values())


def planned_run(item):
    """The run_tests call this item makes (conftest starts it in a second process beside the other tests)."""
    if getattr(item, "originalname", None) != "test_an_honest_alternative_earns_every_point":
        return None
    params = item.callspec.params
    return params["assignment"], params["patch"], params["cell"]


@pytest.mark.parametrize(("assignment", "cell", "patch", "tests"), CASES)
def test_an_honest_alternative_earns_every_point(assignment, cell, patch, tests):
    outcomes = run_tests(assignment, patch, after=cell)
    missing = [grade_id for grade_id in tests if grade_id not in outcomes]
    assert not missing, f"no such tests in {assignment}: {missing}"
    failed = {grade_id: message for grade_id, message in outcomes.items() if message}
    assert not failed, f"an honest alternative lost points: {failed}"


NUDGED_MULTIPLIERS = """
_exact_multipliers = channel_multipliers

def channel_multipliers(input_scale, weight_scales, output_scale):
    m0, shift = _exact_multipliers(input_scale, weight_scales, output_scale)
    return torch.where(m0 + 1000 < 2**31, m0 + 1000, m0 - 1000), shift
"""


def test_multipliers_within_the_accepted_tolerance_cost_forward_nothing():
    """channel_multipliers is checked at rtol 1e-6 (float32 arithmetic moves m0 by up to a few hundred); m0 moved by
    1000 (below 1e-6 of 2**30) can change logit codes of the bit-exact forward test (it changed two of 1,000 when its
    reference requantized with float64 multipliers of its own): the reference must use the multipliers the network
    holds."""
    outcomes = run_tests("06_zero_points", NUDGED_MULTIPLIERS, after="per_channel_requantization_impl")
    failed = {grade_id: message for grade_id, message in outcomes.items() if message}
    assert not failed, f"multipliers within the tolerance lost points: {failed}"


#: Rounds the code whose float64 quotient lies nearest above a tie k + 1/2 (within 2**-20 of it) down to k, as a float32
#: computation of the same quotient can; every other code stays the solution's.
NEAR_TIE_FLIP = """
def _other_side_of_a_near_tie(codes, weights, bits):
    wide = weights.detach().to(torch.float64)
    largest = wide.abs().flatten(1).amax(dim=1).clamp(min=1e-300) / (2 ** (bits - 1) - 1)
    exact = wide / largest.reshape(-1, *[1] * (wide.dim() - 1))
    distance = (exact - exact.floor() - 0.5) / exact.abs()
    distance = torch.where(distance > 0, distance, torch.full_like(distance, float("inf"))).flatten()
    if float(distance.min()) <= 2**-20:
        codes = codes.clone()
        codes.view(-1)[int(distance.argmin())] -= 1
    return codes
"""
NEAR_TIE_FLIPS = {
    "05_ranges_and_bits": (
        "quantized_weights_per_channel_impl",
        NEAR_TIE_FLIP
        + """
_solved_per_channel = quantized_weights_per_channel

def quantized_weights_per_channel(weights, bits=8):
    codes, scales = _solved_per_channel(weights, bits)
    return _other_side_of_a_near_tie(codes, weights, bits), scales
""",
        "quantized_weights_per_channel_trained_layers",
    ),
    "06_zero_points": (
        "per_channel_requantization_impl",
        NEAR_TIE_FLIP
        + """
_solved_per_channel = per_channel_requantization

def per_channel_requantization(weights, input_scale, output_scale, bits=8):
    codes, scales, m0, shift = _solved_per_channel(weights, input_scale, output_scale, bits)
    return _other_side_of_a_near_tie(codes, weights, bits), scales, m0, shift
""",
        "per_channel_requantization_trained_layers",
    ),
}


@pytest.mark.parametrize("assignment", sorted(NEAR_TIE_FLIPS))
def test_a_code_on_the_other_side_of_a_near_tie_costs_nothing(assignment):
    """The trained layers' codes are compared with a float64 reference: where the quotient is a hair above a tie, an
    honest float32 computation (notebook 5's reference itself is one) can round it down. That code must cost no
    point, and must not be called floored."""
    cell, patch, test = NEAR_TIE_FLIPS[assignment]
    outcomes = run_tests(assignment, patch, after=cell)
    assert outcomes[test] is None, outcomes[test]
