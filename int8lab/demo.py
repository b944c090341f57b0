"""``int8lab demo``: execute the solution notebooks end to end and print the accuracy table."""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from .results import RESULTS_ENV

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = (
    "01_weights/weights.ipynb",
    "02_activations/activations.ipynb",
    "03_biases/biases.ipynb",
    "04_integer_only/integer_only.ipynb",
    "05_ranges_and_bits/ranges_and_bits.ipynb",
    "06_zero_points/zero_points.ipynb",
    "07_quantization_aware_training/qat.ipynb",
)
#: JSON key -> what the table calls it.
TABLE = {
    "float": "float Net",
    "weights_int8": "int8 weights",
    "naive_int8": "int8 weights + activations, naive scales",
    "chained_int8": "int8 weights + activations, chained scales",
    "bias_float": "float NetWithBias",
    "bias_int8": "int8 NetWithBias, int32 bias",
    "integer_only_int8": "integer-only NetWithBias (m0 and shift)",
    "torch_int8": "PyTorch int8 engine (reduce_range), NetWithBias",
    "torch_int8_full_range": "PyTorch int8 engine (full 8-bit activations)",
    "integer_only_agreement": "same class: integer-only and PyTorch int8 (reduce_range)",
    "bits3_max": "3-bit weights + activations: max, per tensor, signed",
    "bits3_best": "3-bit weights + activations: best recipe of notebook 5",
    "affine_int8": "integer NetWithBias, zero points (affine activations)",
    "affine_per_channel_int8": "the same with one weight scale per output channel",
    "engine_output_agreement": "identical logit codes: yours and PyTorch int8 (per channel)",
    "qat_bits3": "3-bit QAT, NetBN (mean of 3 seeds)",
    "qat_bits2": "2-bit QAT, NetBN (mean of 3 seeds)",
    "ptq_best_bits3": "3-bit NetBN: best post-training recipe of notebook 5",
    "ptq_best_bits2": "2-bit NetBN: best post-training recipe of notebook 5",
}


class DemoError(RuntimeError):
    """A solution notebook failed to run; the message names it and the partial result."""


def execute_notebooks(
    solutions: Path, out_dir: Path, timeout: int = 600, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """Run each solution notebook in a fresh kernel; save it executed (and its figures) under ``out_dir``.

    Returns the accuracies the notebooks recorded, keyed as in ``TABLE``. When ``timings`` is
    given, it receives each notebook's wall-clock seconds, kernel start included.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    out_dir = out_dir.resolve()  # the kernels run in other folders
    out_dir.mkdir(parents=True, exist_ok=True)
    results_file = out_dir / "accuracy.json"
    results_file.unlink(missing_ok=True)
    os.environ[RESULTS_ENV] = str(results_file)  # the kernels inherit it and record their accuracies
    notebooks = [(relative, nbformat.read(solutions / relative, as_version=4)) for relative in NOTEBOOKS]
    total = sum(cell.cell_type == "code" for _, nb in notebooks for cell in nb.cells)
    with tqdm(total=total, desc="executing notebooks", unit="cell") as bar, tempfile.TemporaryDirectory() as sockets:
        for relative, nb in notebooks:
            bar.set_postfix_str(relative)
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            km = _kernel_manager(sockets)
            client = NotebookClient(
                nb,
                km=km,
                timeout=timeout,
                kernel_name="python3",
                resources={"metadata": {"path": str(target.parent)}},
                on_cell_executed=lambda **_: bar.update(),
            )
            started = time.perf_counter()
            try:
                client.execute()
            except CellExecutionError as exc:
                nbformat.write(nb, target)
                raise DemoError(f"{relative} failed; the partial notebook is in {target}:\n{exc}") from exc
            finally:
                if km.has_kernel and km.is_alive():  # a kernel manager passed in stays ours to shut down
                    km.shutdown_kernel(now=False)
            if timings is not None:
                timings[relative] = time.perf_counter() - started
            nbformat.write(nb, target)
            _save_figures(nb, target.with_suffix(""))
    return json.loads(results_file.read_text()) if results_file.exists() else {}


def _kernel_manager(sockets: str):
    """A kernel manager on local (IPC) sockets in ``sockets`` where the platform has them: the kernel then
    talks to nothing over TCP, and does not warn that its TCP traffic is unencrypted."""
    from jupyter_client.manager import KernelManager

    if os.name != "posix":
        return KernelManager(kernel_name="python3")
    return KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "kernel"))


def _save_figures(nb, stem: Path) -> None:
    count = 0
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png:
                count += 1
                Path(f"{stem}-figure{count}.png").write_bytes(base64.b64decode(png))


def format_table(results: dict[str, float]) -> str:
    width = max(len(label) for label in TABLE.values())
    from .data import dataset_name

    lines = [f"{'test accuracy on ' + dataset_name():<{width}}  ", "-" * (width + 10)]
    for key, label in TABLE.items():
        value = results.get(key)
        lines.append(f"{label:<{width}}  {value:6.2f}%" if value is not None else f"{label:<{width}}  missing")
    return "\n".join(lines)


def run(out_dir: Path, json_path: Path | None, solutions: Path | None = None) -> int:
    from .training import trained_model

    solutions = solutions or REPO_ROOT / "solutions"
    if not all((solutions / relative).is_file() for relative in NOTEBOOKS):
        print(
            f"int8lab demo: the solution notebooks are not in {solutions}; run it from a clone of the "
            "repository, or pass --solutions DIR",
            file=sys.stderr,
        )
        return 2
    started = time.perf_counter()
    # Train (or load) the three networks here, with a visible progress bar, so the kernels only load them.
    trained_model()
    trained_model(bias=True)
    trained_model(batch_norm=True)
    try:
        results = execute_notebooks(solutions, out_dir)
    except DemoError as exc:
        print(f"int8lab demo: {exc}", file=sys.stderr)
        return 1
    print(format_table(results))
    from .engine import choose_engine, cpu_features

    # The engine rows depend on the machine (notebook 4.8): say which kernels produced them.
    print(f"PyTorch int8 engine: {choose_engine()} on {cpu_features()}")
    print(f"\nexecuted notebooks and figures: {out_dir}   ({time.perf_counter() - started:.1f} s)")
    missing = [key for key in TABLE if key not in results]
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({key: results.get(key) for key in TABLE}, indent=2) + "\n")
        print(f"accuracy table as JSON: {json_path}")
    if missing:
        print(f"int8lab demo: the notebooks recorded no value for {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0
