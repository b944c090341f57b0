"""Notebook 5's simulated quantization: recipes reach the right layers, and the sweep helpers say what they claim.

The quantizers are written here (the package must not hold them), the same way a student would.
"""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from int8lab import LAYER_NAMES, profile_activations  # noqa: E402
from int8lab.sweeps import (  # noqa: E402
    MSE_SAMPLE_SIZE,
    Recipe,
    SimulatedQuantization,
    largest_level,
    mse_sample,
    smallest_safe_bits,
)


def quantize(x, scale, bits, signed):
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return torch.clamp(torch.round(torch.as_tensor(x, dtype=torch.float32) / torch.as_tensor(scale)), low, high)


def max_threshold(values, method, bits=8, signed=True):
    return float(np.abs(np.asarray(values)).max())


def per_channel(weights, bits):
    scales = weights.abs().reshape(weights.shape[0], -1).amax(dim=1) / largest_level(bits, True)
    return quantize(weights, scales.reshape(-1, *([1] * (weights.dim() - 1))), bits, True), scales


@pytest.fixture(scope="module")
def lab(float_net, digits_loaders):
    # Calibrated on the evaluation images themselves, so that "max" clips nothing they produce.
    calibration = profile_activations(float_net, digits_loaders[1], max_samples=10_000)
    images, labels = (torch.cat(parts) for parts in zip(*digits_loaders[1], strict=True))
    return SimulatedQuantization(float_net, calibration, quantize, max_threshold, per_channel, images, labels)


def test_an_empty_recipe_is_the_float_network(lab, float_net):
    """PyTorch's own forward is the oracle: nothing quantized, the same logits."""
    with torch.no_grad():
        assert torch.equal(lab.logits(Recipe()), float_net(lab.images))


def test_more_bits_bring_the_logits_closer_to_float(lab, float_net):
    """Nothing clipped: the error of every logit is bounded by the rounding of 16-bit codes, and shrinks with bits."""
    with torch.no_grad():
        float_logits = float_net(lab.images)
        errors = {
            bits: (lab.logits(Recipe(weight_bits=bits, activation_bits=bits)) - float_logits).abs().max().item()
            for bits in (4, 8, 16)
        }
    assert 0 < errors[16] < 1e-3 * float_logits.abs().max().item()
    assert errors[16] < errors[8] < errors[4]


def test_a_recipe_quantizes_only_its_layers(lab, float_net):
    recipe = Recipe(weight_bits=2, layers=("fc2",))
    for name in LAYER_NAMES:
        weights = lab.weights(name, recipe)
        original = getattr(float_net, name).weight
        if name == "fc2":
            assert len(torch.unique(weights)) <= 4 and not torch.equal(weights, original)
        else:
            assert torch.equal(weights, original)


def test_unsigned_codes_cover_relu_layers_only(lab):
    """With unsigned codes at 2 bits a ReLU output has 4 levels; the signed logits keep negative values."""
    seen = {}

    def recording(x, scale, bits, signed):
        seen.setdefault(signed, 0)
        seen[signed] += 1
        return quantize(x, scale, bits, signed)

    spy = SimulatedQuantization(
        lab.net, lab.calibration, recording, max_threshold, per_channel, lab.images[:8], lab.labels[:8]
    )
    spy.logits(Recipe(activation_bits=2, unsigned=True))
    assert seen == {True: 2, False: 4}  # input and logits signed; conv1, conv2, fc1, fc2 unsigned


def test_per_channel_weights_use_the_given_function(lab):
    weights = lab.weights("conv1", Recipe(weight_bits=3, per_channel=True))
    original = lab.net.conv1.weight.detach()
    for channel in range(weights.shape[0]):
        step = original[channel].abs().max() / 3
        assert torch.allclose(weights[channel].abs().max(), step * 3)


def test_mse_sample_keeps_the_largest_magnitude_and_bounds_the_size():
    values = np.random.default_rng(0).normal(size=300_001)
    values[123_457] = -50.0  # not on the sample's stride
    sample = mse_sample(values)
    assert sample.size <= MSE_SAMPLE_SIZE + 1 and np.abs(sample).max() == 50.0
    small = np.arange(10.0)
    assert np.array_equal(mse_sample(small), small)


def test_smallest_safe_bits_stops_at_the_first_width_that_loses_too_much():
    accuracies = {8: 99.0, 7: 99.0, 6: 98.5, 5: 97.9, 4: 99.0, 3: 50.0}
    assert smallest_safe_bits(accuracies, 99.0) == 6  # 5 loses 1.1 points; 4 does not count after it
    assert smallest_safe_bits({8: 97.0}, 99.0) is None
    assert smallest_safe_bits({8: 100.0, 2: 99.5}, 99.0) == 2  # above float is within tolerance


def test_accuracies_are_cached_per_recipe(lab):
    first = lab.accuracy(Recipe(weight_bits=4))
    lab.net.fc3.weight.data.mul_(-1)  # a changed network would change a recomputed accuracy
    try:
        assert lab.accuracy(Recipe(weight_bits=4)) == first
    finally:
        lab.net.fc3.weight.data.mul_(-1)


def test_a_difference_interval_covers_the_difference_and_shrinks_to_it_when_equal(lab):
    """Paired bootstrap over the test images: a recipe against itself differs by exactly 0; a damaging one's
    interval holds its measured difference."""
    same = lab.difference_interval(Recipe(weight_bits=4), Recipe(weight_bits=4))
    assert same == (0.0, 0.0)
    damaged, baseline = Recipe(weight_bits=2, activation_bits=2), Recipe()
    low, high = lab.difference_interval(damaged, baseline)
    measured = lab.accuracy(damaged) - lab.accuracy(baseline)
    assert low <= measured <= high and high < 0 and high - low < 20


def test_results_persist_for_the_same_functions_and_not_for_changed_ones(
    float_net, digits_loaders, tmp_path, monkeypatch
):
    monkeypatch.setenv("INT8LAB_CACHE", str(tmp_path))
    calibration = profile_activations(float_net, digits_loaders[1], max_samples=200)
    images, labels = (torch.cat(parts) for parts in zip(*digits_loaders[1], strict=True))

    def build(threshold):
        return SimulatedQuantization(
            float_net, calibration, quantize, threshold, per_channel, images, labels, persistent=True
        )

    first = build(max_threshold)
    accuracy = first.accuracy(Recipe(weight_bits=3, activation_bits=3))
    assert list((tmp_path / "simulated").glob("*.npz"))
    again = build(max_threshold)
    monkeypatch.setattr(again, "logits", lambda recipe: pytest.fail("recomputed a stored recipe"))
    assert again.accuracy(Recipe(weight_bits=3, activation_bits=3)) == accuracy

    def halved_threshold(values, method, bits=8, signed=True):
        return max_threshold(values, method, bits, signed) / 2

    changed = build(halved_threshold)
    assert changed._store.path != first._store.path and changed._store.get(Recipe(weight_bits=3)) is None


def test_notebook_5_plots_label_what_they_show():
    from int8lab.plots import plot_bit_sweep, plot_clip_thresholds, plot_layer_sensitivity, plot_recipe_grid

    bits = [8, 4, 2]
    curves = {"weights only": {8: 99.0, 4: 98.0, 2: 30.0}}
    figure = plot_bit_sweep(bits, curves, 99.0)
    assert figure.axes[0].get_xlabel() == "bits" and figure.axes[0].xaxis_inverted()
    grid = plot_recipe_grid(bits, {"max, per-tensor, signed": {8: 99.0, 4: 97.0, 2: 10.0}}, 99.0)
    boxed = [patch for patch in grid.axes[0].patches if not patch.get_fill()]
    assert len(boxed) == 1 and boxed[0].get_x() == 0.5  # the first width losing more than 1 point: 4 bits
    sensitivity = plot_layer_sensitivity([4, 2], {name: {4: 99.0, 2: 50.0} for name in LAYER_NAMES}, 99.0)
    assert sum(len(bars) for bars in sensitivity.axes[0].containers) == 2 * len(LAYER_NAMES)
    legend = [text.get_text() for text in sensitivity.axes[0].get_legend().get_texts()]
    assert "within 1 point of float" in legend
    labels = [text.get_text() for text in sensitivity.axes[0].texts]
    assert "99.0" in labels and "50.0" in labels  # one decimal: 0.28 points is one test image
    values = np.concatenate([np.zeros(10), np.linspace(0, 5, 100)])
    histogram = plot_clip_thresholds(values, {"max": 5.0, "sigma": 2.5}, "a layer")
    labels = [text.get_text() for text in histogram.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("max: T = 5 (0.00% clipped)") and "sigma: T = 2.5" in labels[1]


def test_the_difference_interval_is_a_function_of_two_arrays():
    """Notebook 6 compares networks that are not recipes: the same interval from two bool arrays."""
    from int8lab.sweeps import difference_interval

    same = np.array([True, False, True, True])
    assert difference_interval(same, same) == (0.0, 0.0)
    better = np.ones(360, dtype=bool)
    worse = better.copy()
    worse[:36] = False
    low, high = difference_interval(better, worse)
    assert 0.0 < low <= 10.0 <= high
    with pytest.raises(ValueError, match="one shape"):
        difference_interval(same, same[:3])
