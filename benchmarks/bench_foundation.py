"""Print the foundation's speed figures: cold training, cached load, profiling at 400 and 1600 samples.

    .venv/bin/python benchmarks/bench_foundation.py

Uses a fresh temporary cache so that the cold-training figure is real.
"""

import os
import tempfile
import time

os.environ["INT8LAB_CACHE"] = tempfile.mkdtemp(prefix="int8lab-bench-")

import torch  # noqa: E402

from int8lab import evaluate, load_data, profile_activations, trained_model  # noqa: E402


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cache {os.environ['INT8LAB_CACHE']}")
    train_loader, test_loader = load_data("digits")
    model, cold = timed(trained_model, "digits", progress=False)
    print(f"cold training (digits, Net):        {cold:6.2f} s   target <= 15 s")
    _, warm = timed(trained_model, "digits", progress=False)
    print(f"cached load (second call):          {warm:6.3f} s   target < 1 s")
    print(f"float test accuracy:                {evaluate(model, test_loader):6.2f} %  target >= 98 %")
    # The digits train split has 1437 images: repeat it so that 1600 samples really are 1600.
    repeated = torch.utils.data.ConcatDataset([train_loader.dataset, train_loader.dataset])
    big_loader = torch.utils.data.DataLoader(repeated, batch_size=64)
    times = {}
    for samples in (400, 1600):
        runs = [timed(profile_activations, model, big_loader, max_samples=samples) for _ in range(5)]
        times[samples] = min(seconds for _, seconds in runs)
        rows = runs[0][0]["fc3"].shape[0]
        print(f"profile_activations({rows:4d} samples): {times[samples]:6.3f} s (best of 5)")
    print(f"ratio 1600/400: {times[1600] / times[400]:.2f} (linear = 4, quadratic = 16)")


if __name__ == "__main__":
    main()
