"""Figures for the notebooks. Each function returns a matplotlib Figure and never calls plt.show()."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "inline"}:
    matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch.nn as nn  # noqa: E402

from .models import LAYER_NAMES  # noqa: E402

MAX_COLOR, SIGMA_COLOR = "tab:red", "tab:green"


def _histogram_grid(arrays: Mapping[str, np.ndarray], title: str, xlabel: str, spread: str = "sigma"):
    """Histograms with ±max|x| and a measure of the bulk: ±3σ (``"sigma"``, for weights centred on 0)
    or the 99.9th percentile of |x| (``"percentile"``: always inside the data, one-sided data included)."""
    names = list(arrays)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = np.asarray(arrays[name], dtype=np.float64).ravel()
        peak = float(np.abs(values).max()) if values.size else 0.0
        if spread == "sigma":
            bulk, label = (3.0 * float(values.std()) if values.size else 0.0), "3σ"
        else:
            bulk, label = (float(np.percentile(np.abs(values), 99.9)) if values.size else 0.0), "p99.9 |x|"
        two_sided = not values.size or values.min() < 0
        ax.hist(values, bins=80, color="tab:blue", alpha=0.8, log=True)
        ax.axvline(peak, color=MAX_COLOR, linestyle="-", label=f"max|x| = {peak:.3g}")
        ax.axvline(bulk, color=SIGMA_COLOR, linestyle="--", label=f"{label} = {bulk:.3g}")
        if two_sided:  # a ReLU output has no negative side to mark
            ax.axvline(-peak, color=MAX_COLOR, linestyle="-")
            ax.axvline(-bulk, color=SIGMA_COLOR, linestyle="--")
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count (log scale)")
        ax.legend(fontsize="small", loc="upper right")
    fig.suptitle(title)
    return fig


def plot_weight_histograms(model: nn.Module, layers=LAYER_NAMES):
    """One histogram per layer of ``model``'s float weights, with ±max|w| and ±3σ marked."""
    weights = {name: getattr(model, name).weight.detach().cpu().numpy() for name in layers}
    return _histogram_grid(weights, "Weight distributions per layer", "weight value (float)")


def plot_activation_histograms(activations: Mapping[str, np.ndarray]):
    """One histogram per key of ``profile_activations``' result, with max|x| and the 99.9th percentile of |x|
    marked (on both sides only where the values take both signs)."""
    title, xlabel = "Activation distributions per layer (profiled)", "activation value (float)"
    return _histogram_grid(activations, title, xlabel, spread="percentile")


def plot_clipping_tradeoff(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]]):
    """Quantization error against the clipping threshold, one line per layer.

    Args:
        curves: ``{layer: (thresholds, mse, sigma)}``: thresholds as fractions of max|w|
            (1.0 = no clipping), the mean squared error of q * s against w at each, and the
            layer's 3σ as a fraction of max|w| (a star on its line; a 3σ beyond the last
            threshold has no star, and the legend says so).
    """
    fig, ax = plt.subplots(figsize=(7, 4.2), constrained_layout=True)
    for name, (thresholds, mse, three_sigma) in curves.items():
        beyond = three_sigma > float(np.max(thresholds))
        (line,) = ax.plot(thresholds, mse, marker=".", label=f"{name} (3σ beyond max|w|)" if beyond else name)
        if beyond:
            continue
        ax.plot(
            [three_sigma],
            [np.interp(three_sigma, thresholds, mse)],
            marker="*",
            markersize=12,
            color=line.get_color(),
            linestyle="none",
        )
    ax.plot([], [], marker="*", color="gray", linestyle="none", markersize=12, label="3σ threshold")
    ax.axvline(1.0, color=MAX_COLOR, linestyle="-", label="max|w| (no clipping)")
    ax.set_yscale("log")
    ax.set_xlabel("clipping threshold (fraction of max|w|)")
    ax.set_ylabel("mean squared error of q·s vs w (log)")
    ax.set_title("Clipping against rounding: small thresholds clip, large ones round coarsely")
    ax.legend(fontsize="small", ncol=2)
    return fig


def plot_precision_loss(reports: Mapping[str, Mapping], accuracies: Mapping[str, float], float_accuracy: float):
    """The precision-loss study: per layer saturation, collapse to 0 and SQNR, then final accuracy.

    Args:
        reports: ``{variant: {layer: LayerPrecision}}``, e.g. ``{"naive": ..., "chained": ...}``.
        accuracies: ``{variant: test accuracy in percent}``.
        float_accuracy: the float network's accuracy, drawn as a reference line.
    """
    variants = list(reports)
    layers = list(next(iter(reports.values())))
    colors = dict(zip(variants, ("tab:red", "tab:blue", "tab:orange", "tab:purple"), strict=False))
    fig, axes = plt.subplots(1, 4, figsize=(17, 4), constrained_layout=True)
    width = 0.8 / len(variants)
    x = np.arange(len(layers))
    panels = [
        ("saturated", "share of int8 outputs at -128 or 127 (%)", "Saturated by the clamp", 100.0),
        ("collapsed", "share rounded to 0 (float ≠ 0) (%)", "Collapsed to zero", 100.0),
        ("sqnr_db", "SQNR vs float outputs (dB, higher is better)", "Signal to quantization noise", 1.0),
    ]
    for ax, (field, ylabel, title, factor) in zip(axes[:3], panels, strict=True):
        for i, variant in enumerate(variants):
            values = [getattr(reports[variant][layer], field) * factor for layer in layers]
            ax.bar(x + (i - (len(variants) - 1) / 2) * width, values, width, label=variant, color=colors[variant])
        ax.set_xticks(x, layers)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize="small")
    ax = axes[3]
    bars = ax.bar(variants, [accuracies[v] for v in variants], color=[colors[v] for v in variants])
    ax.bar_label(bars, fmt="%.1f%%")
    ax.axhline(float_accuracy, color="black", linestyle="--", label=f"float {float_accuracy:.1f}%")
    ax.set_ylim(0, 105)
    ax.set_xlabel("output scales")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Final accuracy")
    ax.legend(fontsize="small", loc="lower right")
    fig.suptitle("Same int8 network, two ways to choose the output scales")
    return fig
