"""Record what each layer of the float network sees, to compute activation scales from."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from .memo import pure

# Key -> (module to hook, whether to record its input (pre-hook) or its output).
# A layer's profiled activations are what the next layer receives: after ReLU (and pooling
# for the convolutions). fc3 has no next layer, so its raw output is recorded.
_TAPS = {
    "input": ("conv1", "input"),
    "conv1": ("conv2", "input"),
    "conv2": ("fc1", "input"),
    "fc1": ("fc2", "input"),
    "fc2": ("fc3", "input"),
    "fc3": ("fc3", "output"),
}


@pure
def profile_activations(model: nn.Module, loader: DataLoader, max_samples: int = 400) -> dict[str, np.ndarray]:
    """Run up to ``max_samples`` images through ``model`` and return what each layer produced.

    Returns a dict of float32 arrays, each with ``n = min(max_samples, len(dataset))`` rows:
      - ``"input"``: the pixels fed to conv1, shape (n, C, 32, 32);
      - ``"conv1"``: conv1 after ReLU and pooling, shape (n, 6, 14, 14);
      - ``"conv2"``: conv2 after ReLU and pooling, flattened as fc1 receives it, shape (n, 400);
      - ``"fc1"``, ``"fc2"``: after ReLU, shapes (n, 120) and (n, 84);
      - ``"fc3"``: the raw logits, shape (n, 10).
    The model's hooks are removed afterwards, even if the forward pass raises.
    """
    if max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    chunks: dict[str, list[np.ndarray]] = {key: [] for key in _TAPS}
    handles = []

    def recorder(key):
        def record(_module, inputs, output=None):
            tensor = inputs[0] if output is None else output
            chunks[key].append(tensor.detach().to(torch.float32).cpu().numpy().copy())

        return record

    try:
        for key, (layer_name, what) in _TAPS.items():
            layer = getattr(model, layer_name)
            if what == "input":
                handles.append(layer.register_forward_pre_hook(recorder(key)))
            else:
                handles.append(layer.register_forward_hook(recorder(key)))
        was_training = model.training
        model.eval()
        seen = 0
        with torch.no_grad():
            for images, *_ in loader:
                take = min(len(images), max_samples - seen)
                model(images[:take])
                seen += take
                if seen >= max_samples:
                    break
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    # One concatenation at the end keeps the cost linear in the samples (np.append in a loop is quadratic).
    return {key: np.concatenate(parts) for key, parts in chunks.items()}
