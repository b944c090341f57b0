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


def _histogram_grid(arrays: Mapping[str, np.ndarray], title: str, xlabel: str):
    names = list(arrays)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        values = np.asarray(arrays[name], dtype=np.float64).ravel()
        peak = float(np.abs(values).max()) if values.size else 0.0
        three_sigma = 3.0 * float(values.std()) if values.size else 0.0
        ax.hist(values, bins=80, color="tab:blue", alpha=0.8, log=True)
        ax.axvline(peak, color=MAX_COLOR, linestyle="-", label=f"max|x| = {peak:.3g}")
        ax.axvline(-peak, color=MAX_COLOR, linestyle="-")
        ax.axvline(three_sigma, color=SIGMA_COLOR, linestyle="--", label=f"3σ = {three_sigma:.3g}")
        ax.axvline(-three_sigma, color=SIGMA_COLOR, linestyle="--")
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
    """One histogram per key of ``profile_activations``' result, with ±max|x| and ±3σ marked."""
    return _histogram_grid(activations, "Activation distributions per layer (profiled)", "activation value (float)")
