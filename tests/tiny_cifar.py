"""Small CIFAR-10 python archives in the real layout, built by the tests instead of downloaded."""

import io
import pickle
import tarfile

import numpy as np

BATCH_NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cifar_batch(count: int, seed: int, learnable: bool = False) -> dict:
    """``count`` images as CIFAR stores them: uint8 rows of 3,072 bytes (red, green, blue planes).

    Random noise by default. ``learnable`` gives each class a bright stripe of its own (row band
    and colour plane) over the noise, so that the lab's network learns it in two epochs and the
    notebooks' accuracy comparisons mean something.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10 if learnable else rng.integers(0, 10, size=count)
    if not learnable:
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    else:
        images = rng.normal(96, 24, size=(count, 3, 32, 32))
        for index, label in enumerate(labels):
            images[index, label % 3, 3 * label : 3 * label + 4, :] += 120
        data = images.clip(0, 255).astype(np.uint8).reshape(count, 3072)
    return {b"data": data, b"labels": [int(v) for v in labels], b"batch_label": b"tiny"}


def write_tiny_cifar(root, per_batch: int = 3, learnable: bool = False) -> dict:
    """Write ``root/cifar-10-python.tar.gz``: five training batches and a test batch of ``per_batch`` images."""
    batches = {name: cifar_batch(per_batch, seed, learnable) for seed, name in enumerate(BATCH_NAMES)}
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, batch in batches.items():
            raw = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return batches
