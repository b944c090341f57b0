"""The integer kernels and the production engine of notebook 4, with PyTorch's float ops as the oracle."""

import platform
import warnings

import pytest
import torch
import torch.nn.functional as F

from int8lab.integer import (
    KEEP_AFFINE_FORWARD_INTEGER,
    KEEP_FORWARD_INTEGER,
    IntegerModule,
    IntegerPipelineError,
    IntegerPipelineWarning,
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
    assert "A float tensor reached an integer layer" in str(float_input.value)
    with pytest.raises(IntegerPipelineError, match="requantize every layer"):
        linear_int32(torch.zeros(1, 400, dtype=torch.int32), _int8((120, 400), 6), "fc1")


def test_integer_module_warns_on_a_forward_that_computes_in_float_and_refuses_float_input():
    """A warning, not an error: the watch runs in the student's kernel, so values must decide the points."""

    class Dequantizing(IntegerModule):
        def forward(self, x):
            return torch.round(x.float() * 0.5).to(torch.int8)

    class Shifting(IntegerModule):
        def forward(self, x):
            return torch.clamp((x.to(torch.int64) * 3) >> 1, -128, 127).to(torch.int8)

    x = torch.tensor([-5, 0, 7], dtype=torch.int8)
    for _ in range(2):  # shown at every call, not once per place
        computed_in_float = r"Dequantizing.forward computed in float \(float, mul, round\)"
        with pytest.warns(IntegerPipelineWarning, match=computed_in_float):
            assert Dequantizing()(x).tolist() == [-2, 0, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Shifting()(x).tolist() == [-8, 0, 10]
    with pytest.raises(IntegerPipelineError, match="input of Shifting must be a torch.int8"):
        Shifting()(x.float())


def test_each_integer_module_gives_its_own_advice_on_a_float_forward():
    """Notebook 4's advice names requantize and int8 activations; notebook 6's network has uint8 codes with zero
    points and requantizes with rounding_shift, so its warning says that instead."""

    class Affine(IntegerModule):
        code_dtypes = (torch.uint8, torch.int8)
        float_advice = KEEP_AFFINE_FORWARD_INTEGER

        def forward(self, x):
            return torch.round(x.float() * 0.5).to(torch.uint8)

    with pytest.warns(IntegerPipelineWarning) as caught:
        Affine()(torch.tensor([4, 9], dtype=torch.uint8))
    message = str(caught[0].message)
    assert "rounding_shift" in message and "uint8" in message and KEEP_FORWARD_INTEGER not in message


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


def test_the_int16_pair_model_clips_exactly_the_pairs_beyond_int16():
    """vpmaddubsw's pairs: 255 * -128 twice is -65,280, clipped to -32,768; 7-bit codes never clip."""
    from int8lab.engine import pair_saturated_linear

    codes = torch.tensor([[255, 255, 1, 2], [127, 127, 127, 127]])
    weight = torch.tensor([[-128, -128, 3, 4], [-128, -128, -128, -128]], dtype=torch.int8)
    accumulators, clipped = pair_saturated_linear(codes, weight)
    exact = codes @ weight.to(torch.int64).T
    assert accumulators[0, 0] == -32768 + 11 and exact[0, 0] == -65280 + 11
    assert clipped.tolist()[0][0] == [True, False] and not clipped[1].any()
    assert torch.equal(accumulators[1], exact[1])
    odd, _ = pair_saturated_linear(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 1]], dtype=torch.int8))
    assert odd.item() == 6  # an odd fan-in pairs its last product with a zero


def test_the_engine_is_chosen_by_what_pytorch_has():
    from int8lab import engine

    assert engine.choose_engine(["none", "qnnpack"]) == "qnnpack"  # an ARM build
    assert engine.choose_engine(["qnnpack", "onednn", "x86", "fbgemm"]) == "x86"
    with pytest.raises(ValueError, match="no quantized engine"):
        engine.choose_engine(["none"])
    assert engine.choose_engine() in torch.backends.quantized.supported_engines
    assert engine.cpu_features().startswith(platform.machine())


def test_reduce_range_keeps_the_calibration_images_codes_near_7_bits(float_net, digits_loaders):
    """Codes are scaled to 0..127 on the calibration images; the quantized layers before fc1 round differently
    from the float ones the observers saw, so a code may go a step or two beyond."""
    from int8lab.engine import layer_input_codes, torch_int8_model

    images = next(iter(digits_loaders[0]))[0]
    calibration = [(images, None)]  # the same images calibrate and are measured
    reduced = torch_int8_model(float_net, calibration, max_samples=len(images), reduce_range=True)
    full = torch_int8_model(float_net, calibration, max_samples=len(images), reduce_range=False)
    assert reduced.reduce_range and reduced.engine in torch.backends.quantized.supported_engines
    assert int(layer_input_codes(reduced, "fc1", images).max()) <= 130
    assert int(layer_input_codes(full, "fc1", images).max()) >= 250


def test_kernels_take_uint8_codes_as_notebook_6_does():
    """Unsigned activation codes 0..255 (a zero point's uint8) are summed exactly too; pooling keeps uint8."""
    codes = torch.randint(0, 256, (2, 6, 14, 14), generator=torch.Generator().manual_seed(9), dtype=torch.uint8)
    filters = _int8((16, 6, 5, 5), 10)
    assert torch.equal(conv2d_int32(codes, filters), F.conv2d(codes.double(), filters.double()).to(torch.int32))
    flat = codes.flatten(1)[:, :400]
    weight = _int8((120, 400), 11)
    assert torch.equal(linear_int32(flat, weight), (flat.double() @ weight.double().T).to(torch.int32))
    pooled = max_pool2x2_int8(codes)
    assert pooled.dtype == torch.uint8 and torch.equal(pooled.double(), F.max_pool2d(codes.double(), 2))
    with pytest.raises(IntegerPipelineError, match="torch.int8 or torch.uint8"):
        linear_int32(flat.to(torch.int16), weight)


def test_an_integer_module_takes_the_code_dtypes_it_declares():
    class Unsigned(IntegerModule):
        code_dtypes = (torch.uint8, torch.int8)

        def forward(self, x):
            return x

    codes = torch.tensor([0, 200, 255], dtype=torch.uint8)
    assert torch.equal(Unsigned()(codes), codes)
    with pytest.raises(IntegerPipelineError, match="torch.uint8 or torch.int8"):
        Unsigned()(codes.to(torch.int32))


def test_the_engine_hands_over_its_per_channel_parameters_and_codes(float_net, digits_loaders):
    """engine_parameters: one weight scale per output channel, no bias in Net; passed_on_codes: what each step
    passes on, the input's codes being the images quantized with the engine's own scale and zero point."""
    from int8lab.engine import engine_parameters, passed_on_codes, torch_int8_model

    train_loader, test_loader = digits_loaders
    engine = torch_int8_model(float_net, train_loader, max_samples=200, per_channel=True)
    parameters = engine_parameters(engine)
    assert engine.per_channel and set(parameters) == {"input", "conv1", "conv2", "fc1", "fc2", "fc3"}
    conv1 = parameters["conv1"]
    assert conv1["weight_codes"].dtype == torch.int8 and conv1["weight_codes"].shape == (6, 1, 5, 5)
    assert conv1["weight_scales"].shape == (6,) and len(set(conv1["weight_scales"].tolist())) == 6
    assert conv1["bias"] is None or not conv1["bias"].any()  # Net has no bias; some engines keep zeros
    images = next(iter(test_loader))[0][:8]
    codes = passed_on_codes(engine, images)
    shapes = {key: tuple(value.shape) for key, value in codes.items()}
    assert shapes == {
        "input": (8, 1, 32, 32),
        "conv1": (8, 6, 14, 14),
        "conv2": (8, 400),
        "fc1": (8, 120),
        "fc2": (8, 84),
        "fc3": (8, 10),
    }
    assert all(value.dtype == torch.uint8 for value in codes.values())
    scale, zero_point = parameters["input"]
    assert torch.equal(
        codes["input"].to(torch.int64), torch.clamp(torch.round(images / scale) + zero_point, 0, 255).to(torch.int64)
    )
    per_tensor = engine_parameters(torch_int8_model(float_net, train_loader, max_samples=200))
    assert len(set(per_tensor["conv1"]["weight_scales"].tolist())) == 1


def test_int16_pairs_counts_the_pairs_vpmaddubsw_clips_and_the_outputs_any_pairing_could():
    """Codes of 136 and 130 times 127 leave int16 (33,782), times -128 too; codes up to 128 never can."""
    from int8lab.engine import int16_pairs

    weight = torch.tensor([[127, 127, 0, 0], [127, 0, 127, 0], [-128, -128, -128, -128]], dtype=torch.int8)
    # neighbours: rows 0 and 2 pair the two codes and clip; row 1 pairs each with a small product
    assert int16_pairs(torch.tensor([[136, 130, 5, 9]]), weight) == (2, 2)
    # no neighbours clip now, but rows 1 and 2 hold two products a kernel pairing otherwise would clip
    assert int16_pairs(torch.tensor([[136, 5, 130, 9]]), weight) == (0, 2)
    assert int16_pairs(torch.tensor([[128, 128, 128, 128]]), weight) == (0, 0)
    # A convolution's pairs run over (kernel row, kernel column, channel): channels 0 and 1 of one pixel pair up.
    image = torch.zeros((1, 2, 2, 2), dtype=torch.uint8)
    image[0, :, 0, 0] = 200
    kernel = torch.zeros((1, 2, 2, 2), dtype=torch.int8)
    kernel[0, :, 0, 0] = 127
    assert int16_pairs(image, kernel) == (1, 1)
    kernel[0, 1, 0, 0], kernel[0, 1, 1, 1] = 0, 127  # the same products' partner is now another pixel's
    image[0, 1, 1, 1] = 200
    assert int16_pairs(image, kernel) == (0, 1)
