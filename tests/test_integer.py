"""The integer kernels and the production engine of notebook 4, with PyTorch's float ops as the oracle."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from int8lab.checks import MISCONCEPTIONS
from int8lab.integer import (
    IntegerModule,
    IntegerPipelineError,
    conv2d_int32,
    linear_int32,
    max_pool2x2_int8,
    recorded_accumulators,
    relu_int8,
)


def _int8(shape, seed, low=-128, high=128):
    return torch.randint(low, high, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)


def test_integer_convolution_equals_the_float_one_on_the_same_integers():
    """Sums below 2**24 are exact in float32 too, so F.conv2d is an exact oracle here."""
    pixels, filters = _int8((3, 6, 14, 14), 0), _int8((16, 6, 5, 5), 1, -127)
    result = conv2d_int32(pixels, filters)
    assert result.dtype == torch.int32 and result.shape == (3, 16, 10, 10)
    assert torch.equal(result, F.conv2d(pixels.double(), filters.double()).to(torch.int32))


def test_integer_linear_equals_the_float_product():
    x, weight = _int8((4, 400), 2), _int8((120, 400), 3, -127)
    result = linear_int32(x, weight)
    assert result.dtype == torch.int32
    assert torch.equal(result, (x.double() @ weight.double().T).to(torch.int32))


def test_pooling_and_relu_stay_int8_and_match_float():
    x = _int8((2, 6, 28, 28), 4)
    pooled = max_pool2x2_int8(x)
    assert pooled.dtype == torch.int8 and torch.equal(pooled.double(), F.max_pool2d(x.double(), 2))
    assert torch.equal(relu_int8(x).double(), F.relu(x.double()))


def test_kernels_refuse_float_and_int32_inputs_and_say_why():
    weight = _int8((6, 1, 5, 5), 5)
    with pytest.raises(IntegerPipelineError, match="torch.float32") as float_input:
        conv2d_int32(torch.zeros(1, 1, 32, 32), weight, "conv1")
    assert MISCONCEPTIONS["dequantized_forward"] in str(float_input.value)
    with pytest.raises(IntegerPipelineError, match="requantize every layer"):
        linear_int32(torch.zeros(1, 400, dtype=torch.int32), _int8((120, 400), 6), "fc1")


def test_integer_module_refuses_a_forward_that_computes_in_float():
    class Dequantizing(IntegerModule):
        def forward(self, x):
            return torch.round(x.float() * 0.5).to(torch.int8)

    class Shifting(IntegerModule):
        def forward(self, x):
            return torch.clamp((x.to(torch.int64) * 3) >> 1, -128, 127).to(torch.int8)

    x = torch.tensor([-5, 0, 7], dtype=torch.int8)
    with pytest.raises(IntegerPipelineError, match=r"Dequantizing.forward computed in float \(float, mul, round\)"):
        Dequantizing()(x)
    assert Shifting()(x).tolist() == [-8, 0, 10]
    with pytest.raises(IntegerPipelineError, match="input of Shifting must be a torch.int8"):
        Shifting()(x.float())


def test_recorded_accumulators_keep_the_largest_and_the_tensors():
    x, weight = _int8((2, 400), 7), _int8((10, 400), 8)
    with recorded_accumulators(capture=True) as record:
        first = linear_int32(x, weight, "fc")
        linear_int32(x[:1], weight, "fc")
    assert record.largest["fc"] == int(first.abs().max())
    assert len(record.tensors["fc"]) == 2 and torch.equal(record.tensors["fc"][0], first)
    linear_int32(x, weight, "outside")
    assert "outside" not in record.largest


def test_the_engine_quantizes_the_network_without_unexpected_warnings(float_net, digits_loaders):
    from int8lab import evaluate
    from int8lab.engine import torch_int8_model, unexpected_warnings

    train_loader, test_loader = digits_loaders
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = torch_int8_model(float_net, train_loader, max_samples=400)
        accuracy = evaluate(engine, test_loader)
    assert unexpected_warnings(caught) == []
    assert accuracy >= evaluate(float_net, test_loader) - 2.0
    assert any(".quantized" in type(module).__module__ for module in engine.modules())
