"""Figures for the notebooks. Each function returns a matplotlib Figure and never calls plt.show()."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib
import matplotlib.ticker

if matplotlib.get_backend().lower() not in {"module://matplotlib_inline.backend_inline", "inline"}:
    matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch.nn as nn  # noqa: E402

from .analysis import INT16_MAX, INT32_MAX  # noqa: E402
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


def plot_bias_handling(rows: Mapping[str, tuple[float, float, float]]):
    """Ways of putting fc3's bias into the integer network, side by side, the first one being the reference.

    Args:
        rows: ``{handling: (bias_error, logit_error, accuracy)}``: the largest error of the bias the
            integer accumulator adds, in float units; the mean error of the dequantized logits
            against the float network's; and the test accuracy in percent. Both errors are
            drawn on log scales, and each mistake's logit error is labelled with how much it
            exceeds the reference's.
    """
    import textwrap

    names = list(rows)
    colors = ["tab:green"] + ["tab:red"] * (len(names) - 1)
    ticks = [textwrap.fill(name, 16) + f"\n{rows[name][2]:.2f}% acc." for name in names]
    bias_errors = [rows[name][0] for name in names]
    logit_errors = [rows[name][1] for name in names]
    reference = logit_errors[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5), constrained_layout=True)
    bars = left.bar(range(len(names)), bias_errors, color=colors)
    left.bar_label(bars, labels=[f"{v:.2g}" for v in bias_errors], fontsize="small")
    left.set_ylabel("largest |added bias - float bias| (float units, log)")
    left.set_title("The bias the accumulator adds")
    bars = right.bar(range(len(names)), logit_errors, color=colors)
    excess = [
        f"{v:.4f}" + ("" if i == 0 else f"\n{(v / reference - 1) * 100:+.0f}%") for i, v in enumerate(logit_errors)
    ]
    right.bar_label(bars, labels=excess, fontsize="small")
    right.set_ylabel("mean |dequantized logit - float logit| (float units, log)")
    right.set_title("The logits that come out (% against the first bar)")
    right.set_ylim(min(logit_errors) * 0.8, max(logit_errors) * 2.0)
    for ax in (left, right):
        ax.set_yscale("log")
        ax.set_xticks(range(len(names)), ticks, fontsize="small")
    fig.suptitle("fc3's bias, five ways: green is the reference, red the mistakes")
    return fig


def plot_accumulator_widths(widths: Mapping[str, object]):
    """Per layer, the worst-case accumulator (fan-in x 127 x 128) and the largest one observed,
    against what int16 and int32 hold.

    Args:
        widths: ``{layer: AccumulatorWidth}`` from ``analysis.accumulator_widths``.
    """
    names = list(widths)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(8, 4.2), constrained_layout=True)
    bound = ax.bar(x - 0.2, [widths[n].bound for n in names], 0.4, color="tab:gray", label="bound: fan-in × 127 × 128")
    seen = ax.bar(x + 0.2, [widths[n].observed for n in names], 0.4, color="tab:blue", label="largest observed")
    ax.bar_label(bound, labels=[f"{widths[n].bound:,}" for n in names], fontsize="x-small")
    ax.bar_label(seen, labels=[f"{widths[n].observed:,.0f}" for n in names], fontsize="x-small")
    ax.axhline(INT16_MAX, color="tab:red", linestyle="--", label=f"int16 max ({INT16_MAX:,})")
    ax.axhline(INT32_MAX, color="black", linestyle=":", label=f"int32 max ({INT32_MAX:,})")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{n}\nfan-in {widths[n].fan_in}" for n in names])
    ax.set_ylabel("|accumulator| (log scale)")
    ax.set_title("How wide must the accumulator be?")
    ax.legend(fontsize="small", loc="center right")
    return fig


def plot_multiplier_bits(bits, relative_errors: Mapping[str, np.ndarray], changed: Mapping[str, np.ndarray]):
    """Requantization against the width of the fixed-point multiplier m0.

    Args:
        bits: the widths tried, e.g. 4 to 31.
        relative_errors: ``{layer: |m0 * 2**-shift - M| / M at each width}``.
        changed: ``{layer: share (0 to 1) of the layer's int8 outputs that differ from the 31-bit result}``,
            each layer requantizing the same accumulators.
    """
    bits = np.asarray(bits)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4), constrained_layout=True)
    for name, errors in relative_errors.items():
        left.plot(bits, np.maximum(errors, 1e-18), marker=".", label=name)
    left.plot(bits, 2.0**-bits, color="black", linestyle="--", label="bound 2^-bits")
    left.set_yscale("log")
    left.set_xlabel("bits of m0")
    left.set_ylabel("relative error of m0 · 2^-shift (log)")
    left.set_title("The multiplier's error")
    left.legend(fontsize="small")
    for name, share in changed.items():
        percent = 100.0 * np.asarray(share, dtype=np.float64)
        # A log axis shows the long tail of rare changes; a share of exactly 0 has no point on it.
        right.plot(bits, np.where(percent > 0, percent, np.nan), marker=".", label=name)
    right.set_yscale("log")
    right.set_xlim(left.get_xlim())
    right.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    right.set_xlabel("bits of m0")
    right.set_ylabel("int8 outputs changed vs 31 bits (%, log)")
    right.set_title("Each layer's int8 outputs (a share of 0 is not drawn)")
    right.legend(fontsize="small")
    fig.suptitle("How many bits does the fixed-point multiplier need?")
    return fig


def plot_bit_sweep(bits, curves: Mapping[str, Mapping[int, float]], float_accuracy: float):
    """Accuracy against bit width, one line per curve (e.g. weights only, activations only, both).

    Args:
        bits: the bit widths, e.g. 8 down to 2.
        curves: ``{label: {bits: accuracy in percent}}``.
        float_accuracy: the float network's accuracy, drawn as a line with a band 1 point below it.
    """
    bits = list(bits)
    fig, ax = plt.subplots(figsize=(7.5, 4.4), constrained_layout=True)
    for label, accuracies in curves.items():
        ax.plot(bits, [accuracies[b] for b in bits], marker="o", label=label)
    ax.axhline(float_accuracy, color="black", linestyle="--", label=f"float ({float_accuracy:.1f}%)")
    ax.axhspan(float_accuracy - 1.0, float_accuracy, color="tab:gray", alpha=0.2, label="within 1 point of float")
    ax.axhline(10.0, color="tab:gray", linestyle=":", label="chance (10%)")
    ax.set_xticks(bits)
    ax.invert_xaxis()
    ax.set_xlabel("bits")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title("Fewer bits: where the network breaks")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: the curves span the axes
    return fig


def plot_recipe_grid(bits, rows: Mapping[str, Mapping[int, float]], float_accuracy: float, tolerance: float = 1.0):
    """A table of accuracies, one row per recipe and one column per bit width, as a heat map.

    Cells that lose more than ``tolerance`` points against float are outlined in the row's
    first such column: where that recipe tips.

    Args:
        bits: the bit widths (columns), widest first.
        rows: ``{recipe label: {bits: accuracy in percent}}``.
    """
    bits, labels = list(bits), list(rows)
    table = np.array([[rows[label][b] for b in bits] for label in labels])
    fig, ax = plt.subplots(figsize=(1.1 * len(bits) + 4.5, 0.42 * len(labels) + 1.6), constrained_layout=True)
    # cividis reads the same with red-green colour blindness; the numbers carry the values anyway
    image = ax.imshow(table, cmap="cividis", vmin=10.0, vmax=float_accuracy, aspect="auto")
    middle = (10.0 + float_accuracy) / 2
    for i, row in enumerate(table):
        tipped = False
        for j, value in enumerate(row):
            lost = float_accuracy - value > tolerance
            ax.text(
                j,
                i,
                f"{value:.1f}",
                ha="center",
                va="center",
                fontsize="small",
                fontweight="bold" if lost else None,
                color="white" if value < middle else "black",  # contrast on cividis' dark blue and light yellow
            )
            if lost and not tipped:
                tipped = True
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2.5))
    ax.set_xticks(range(len(bits)), [f"{b} bits" for b in bits])
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    ax.set_title(f"Accuracy by recipe (boxed: the first width that loses more than {tolerance:g} point)")
    return fig


def plot_layer_sensitivity(bits, accuracies: Mapping[str, Mapping[int, float]], float_accuracy: float):
    """Accuracy when only one layer is quantized, for each layer and bit width (grouped bars).

    Args:
        bits: the bit widths, one bar per layer in each group.
        accuracies: ``{layer: {bits: accuracy in percent}}``.
    """
    bits, names = list(bits), list(accuracies)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8.5, 4.4), constrained_layout=True)
    for k, name in enumerate(names):
        x = np.arange(len(bits)) + (k - (len(names) - 1) / 2) * width
        bars = ax.bar(x, [accuracies[name][b] for b in bits], width, label=name)
        ax.bar_label(bars, labels=[f"{accuracies[name][b]:.1f}" for b in bits], fontsize="x-small", rotation=90)
    ax.axhline(float_accuracy, color="black", linestyle="--", label=f"float ({float_accuracy:.1f}%)")
    ax.axhspan(float_accuracy - 1.0, float_accuracy, color="tab:gray", alpha=0.2, label="within 1 point of float")
    ax.set_xticks(range(len(bits)), [f"{b} bits" for b in bits])
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 112)  # room for the rotated labels above the tallest bars
    ax.set_title("One layer at a time: its weights and its output at b bits, the rest float")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars fill the axes
    return fig


def plot_clip_thresholds(values: np.ndarray, thresholds: Mapping[str, float], title: str):
    """A histogram of |values| (log counts) with each method's clipping threshold as a vertical line.

    Args:
        values: float array of any shape (one layer's activations, say).
        thresholds: ``{method: threshold T}``; values beyond T are clipped to it.
    """
    magnitudes = np.abs(np.asarray(values, dtype=np.float64)).ravel()
    fig, ax = plt.subplots(figsize=(7.5, 4), constrained_layout=True)
    ax.hist(magnitudes, bins=120, color="tab:blue", alpha=0.6)
    ax.set_yscale("log")
    styles = ["-", "--", "-.", ":"]
    for k, (method, threshold) in enumerate(thresholds.items()):
        clipped = float((magnitudes > threshold).mean())
        ax.axvline(
            threshold,
            color=f"C{k + 1}",
            linestyle=styles[k % len(styles)],
            linewidth=2,
            label=f"{method}: T = {threshold:.3g} ({clipped:.2%} clipped)",
        )
    ax.set_xlabel("|value|")
    ax.set_ylabel("count (log)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: off the histogram
    return fig
