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
