import matplotlib

matplotlib.use("Agg")

from int8lab.plots import plot_activation_histograms, plot_weight_histograms  # noqa: E402


def _check_readable(figure, panels):
    axes = [ax for ax in figure.axes if ax.get_title()]
    assert len(axes) == panels
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        labels = [text.get_text() for text in ax.get_legend().get_texts()]
        assert any(label.startswith("max|x|") for label in labels) and any(label.startswith("3σ") for label in labels)


def test_weight_histograms_have_a_panel_per_layer(float_net):
    figure = plot_weight_histograms(float_net)
    _check_readable(figure, 5)
    peak = float_net.fc1.weight.abs().max().item()
    fc1 = next(ax for ax in figure.axes if ax.get_title() == "fc1")
    assert any(abs(line.get_xdata()[0] - peak) < 1e-6 for line in fc1.get_lines())


def test_activation_histograms_have_a_panel_per_key(float_net, digits_loaders):
    from int8lab import profile_activations

    figure = plot_activation_histograms(profile_activations(float_net, digits_loaders[0], max_samples=50))
    _check_readable(figure, 6)
