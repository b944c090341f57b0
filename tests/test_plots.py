import matplotlib

matplotlib.use("Agg")

from int8lab.plots import plot_activation_histograms, plot_weight_histograms  # noqa: E402


def _check_readable(figure, panels, bulk="3σ"):
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert len(axes) == panels
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert any(label.startswith("max|x|") for label in labels) and any(label.startswith(bulk) for label in labels)


def test_weight_histograms_have_a_panel_per_layer(float_net):
    figure = plot_weight_histograms(float_net)
    _check_readable(figure, 5)
    peak = float_net.fc1.weight.abs().max().item()
    fc1 = next(ax for ax in figure.axes if ax.get_title() == "fc1")
    assert any(abs(line.get_xdata()[0] - peak) < 1e-6 for line in fc1.get_lines())


def test_activation_histograms_have_a_panel_per_key(float_net, digits_loaders):
    import numpy as np

    from int8lab import profile_activations

    activations = profile_activations(float_net, digits_loaders[0], max_samples=50)
    figure = plot_activation_histograms(activations)
    _check_readable(figure, 6, bulk="p99.9")
    for ax in (ax for ax in figure.axes if ax.get_title()):
        values = activations[ax.get_title()]
        marks = [float(line.get_xdata()[0]) for line in ax.get_lines()]
        # No mark beyond max|x| (3σ lay above conv1's maximum), and a ReLU output has no negative mark.
        assert all(abs(mark) <= np.abs(values).max() + 1e-9 for mark in marks), ax.get_title()
        assert values.min() < 0 or all(mark >= 0 for mark in marks), ax.get_title()


def test_a_3_sigma_beyond_the_range_gets_no_star_and_says_so():
    import numpy as np

    from int8lab.plots import plot_clipping_tradeoff

    fractions = np.linspace(0.1, 1.0, 10)
    figure = plot_clipping_tradeoff(
        {"inside": (fractions, fractions + 1, 0.5), "outside": (fractions, fractions + 2, 1.3)}
    )
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "outside (3σ beyond max|w|)" in labels and "inside" in labels
    stars = [line for line in figure.axes[0].get_lines() if line.get_marker() == "*" and len(line.get_xdata())]
    assert [float(star.get_xdata()[0]) for star in stars] == [0.5]


def _integer_net(seed=0):
    import torch

    from int8lab import LAYER_NAMES, Net

    generator = torch.Generator().manual_seed(seed)
    net = Net(in_channels=1)
    for name in LAYER_NAMES:
        layer = getattr(net, name)
        layer.weight.data = torch.randint(-127, 128, layer.weight.shape, generator=generator).float()
    return net.eval()


def test_accumulator_widths_measure_what_each_layer_sums():
    """PyTorch as the oracle: conv1's largest |output| on the same images, and the fan-in bound."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from int8lab.analysis import accumulator_widths

    net = _integer_net()
    images = torch.randint(-128, 128, (8, 1, 32, 32), generator=torch.Generator().manual_seed(1)).float()
    loader = DataLoader(TensorDataset(images, torch.zeros(8, dtype=torch.long)), batch_size=3)
    widths = accumulator_widths(net, loader)
    with torch.no_grad():
        conv1_peak = float(net.conv1(images).abs().max())
    assert widths["conv1"].observed == conv1_peak
    assert (widths["conv1"].fan_in, widths["fc1"].fan_in, widths["fc3"].fan_in) == (25, 400, 84)
    assert widths["conv2"].bound == 150 * 127 * 128


def test_logit_error_is_zero_for_exact_logits_and_grows_with_a_wrong_step(float_net, digits_loaders):
    import torch

    from int8lab.analysis import logit_error

    class Halved(torch.nn.Module):
        def forward(self, images):
            return float_net(images) / 0.25

    _, test_loader = digits_loaders
    assert logit_error(Halved(), float_net, test_loader, 0.25) < 1e-9
    assert logit_error(Halved(), float_net, test_loader, 0.5) > 0.1


def test_bias_and_accumulator_plots_label_every_bar():
    from int8lab.analysis import AccumulatorWidth
    from int8lab.plots import plot_accumulator_widths, plot_bias_handling

    rows = {"right": (1e-4, 0.05, 99.0), "clamped": (0.05, 0.06, 99.0), "none": (0.08, 0.07, 98.5)}
    figure = plot_bias_handling(rows)
    right_panel = figure.axes[1]
    labels = [text.get_text() for text in right_panel.texts]
    assert labels == ["0.0500", "0.0600\n+20%", "0.0700\n+40%"]
    widths = {"conv1": AccumulatorWidth(25, 25 * 127 * 128, 150_519.0)}
    figure = plot_accumulator_widths(widths)
    assert "int16 max (32,767)" in [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
