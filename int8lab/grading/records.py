"""What a probe records in the student's kernel, as plain data, and how the judge reads it back.

A record is one JSON line per probe statement:

    {"cell": GRADE_ID, "statement": INDEX, "values": {NAME: VALUE, ...}}
    {"cell": GRADE_ID, "statement": INDEX, "error": {"type": "ValueError", "message": "..."}}

VALUE is JSON (None, bool, int, float, str) or one of these tagged objects:
``{"list": [...]}``, ``{"tuple": [...]}``, ``{"dict": [[key, value], ...]}`` (string keys),
``{"array": {"kind": "torch" | "numpy" | "scalar", "dtype": ..., "shape": [...], "bytes": base64}}``
or ``{"object": TYPE NAME}`` for anything else, which the judge cannot use.

The kernel writes these lines (``returned``, ``failed``); everything in them is the student's
to choose, so the judge decodes them with ``json`` and ``numpy.frombuffer`` only: no pickle,
no import, no call into anything the record names.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import dataclass, field

#: The descriptor the kernel appends its records to (opened by the sandbox before it starts).
RECORDS_FD_ENV = "INT8LAB_PROBE_RECORDS_FD"
#: The judge reads at most this much of a record file; a probe refuses single values beyond it.
MAX_RECORD_BYTES = 64 << 20
MAX_DEPTH = 8
#: dtypes a recorded array may have; anything else is recorded as an object.
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class RecordError(ValueError):
    """A record that is not plain data of the expected form."""


# ----------------------------------------------------------------------------- in the kernel


def encode(value, depth: int = 0):
    """``value`` as JSON-ready plain data (see the module docstring)."""
    import numpy as np

    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return value if abs(value) < 2**63 else float(value)
    if isinstance(value, float):
        return value
    if depth >= MAX_DEPTH:
        return {"object": "nested too deeply"}
    if isinstance(value, list | tuple):
        return {type(value).__name__ if type(value) in (list, tuple) else "list": [encode(v, depth + 1) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[str(k), encode(v, depth + 1)] for k, v in value.items()]}
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        if value.is_quantized:
            return {"object": f"quantized tensor ({value.dtype}); return its int8 values in a float32 tensor"}
        array = value.detach().cpu()
        if array.dtype == torch.bfloat16:
            array = array.float()
        return _array(_c_order(array.numpy()), "torch")
    if isinstance(value, np.ndarray):
        return _array(_c_order(value), "numpy")
    if isinstance(value, np.generic):
        return _array(np.asarray(value), "scalar")
    return {"object": type(value).__name__}


def _c_order(array):
    """``array`` in C order, keeping its shape (``np.ascontiguousarray`` makes a 0-d array 1-d: a scale
    returned as a 0-d tensor would then be recorded with shape (1,))."""
    return array if array.flags.c_contiguous else array.copy(order="C")


def _torch():
    import sys

    return sys.modules.get("torch")


def _array(array, kind: str):
    if array.dtype.name not in DTYPES:
        return {"object": f"array of {array.dtype.name}"}
    if array.nbytes > MAX_RECORD_BYTES:
        return {"object": f"array of {array.nbytes} bytes, more than a record may hold"}
    data = base64.b64encode(array.astype(array.dtype.newbyteorder("<")).tobytes()).decode()
    return {"array": {"kind": kind, "dtype": array.dtype.name, "shape": list(array.shape), "bytes": data}}


#: How every line ``_write`` makes begins (``json.dumps`` keeps the dict's order, and "cell" comes first).
_RECORD_START = '{"cell": '
#: Set by ``capture()``: records go to this list instead of the file (in-process probes).
_captured: list | None = None


def _write(line: dict) -> None:
    if _captured is not None:
        _captured.append(json.dumps(line))
        return
    descriptor = os.environ.get(RECORDS_FD_ENV, "")
    if descriptor.isdigit():
        os.write(int(descriptor), (json.dumps(line) + "\n").encode())


def returned(cell: str, statement: int, values: dict) -> None:
    """Record the names a probe statement bound."""
    _write({"cell": cell, "statement": statement, "values": {name: _encoded(v) for name, v in values.items()}})


def _encoded(value):
    try:
        return encode(value)
    except Exception:  # an object whose conversion raises is recorded by its type
        return {"object": type(value).__name__}


def failed(cell: str, statement: int, error: BaseException) -> None:
    """Record that a probe statement raised ``error``."""
    try:
        message = str(error)
    except Exception:  # a student's exception whose __str__ raises
        message = ""
    _write({"cell": cell, "statement": statement, "error": {"type": type(error).__name__, "message": message[:2000]}})


@contextlib.contextmanager
def capture():
    """Collect the records of probes run in this process (the reference check, the tests) as text."""
    global _captured
    lines: list[str] = []
    previous, _captured = _captured, lines
    try:
        yield lines
    finally:
        _captured = previous


# ----------------------------------------------------------------------------- in the judge


class Unrecorded:
    """Stands for a value the probe could not record as plain data (a model, a function...).

    Any use raises: a check that needs it is wrong, and says so.
    """

    def __init__(self, name: str, type_name: str):
        object.__setattr__(self, "_what", f"{name!r} (a {type_name}, which the grader cannot record)")
        object.__setattr__(self, "_type", type_name)

    def _refuse(self, *args, **kwargs):
        raise RecordError(f"the grader has no plain value for {object.__getattribute__(self, '_what')}")

    __getattr__ = __call__ = __getitem__ = __iter__ = __bool__ = __eq__ = __float__ = __len__ = _refuse
    __hash__ = None


def decode(value, depth: int = 0):
    """The Python value of one encoded VALUE; ``RecordError`` if it is not of the documented form."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
        # ``encode`` writes such an int as a float: this one was forged, and could cost the judge minutes.
        raise RecordError("a recorded integer is larger than any the kernel records")
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth >= MAX_DEPTH + 1 or not isinstance(value, dict) or len(value) != 1:
        raise RecordError("not a recorded value")
    ((tag, content),) = value.items()
    if tag in ("list", "tuple") and isinstance(content, list):
        items = [decode(v, depth + 1) for v in content]
        return items if tag == "list" else tuple(items)
    if tag == "dict" and isinstance(content, list):
        pairs = {}
        for pair in content:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
                raise RecordError("a recorded dict entry is not a [string, value] pair")
            pairs[pair[0]] = decode(pair[1], depth + 1)
        return pairs
    if tag == "array" and isinstance(content, dict):
        return _decode_array(content)
    if tag == "object" and isinstance(content, str):
        return Unrecorded("value", content[:100])
    raise RecordError(f"unknown record tag {tag!r}")


def _decode_array(content: dict):
    import numpy as np

    kind, dtype, shape, data = (content.get(k) for k in ("kind", "dtype", "shape", "bytes"))
    if kind not in ("torch", "numpy", "scalar") or dtype not in DTYPES or not isinstance(data, str):
        raise RecordError("a recorded array has an unknown kind or dtype")
    if not isinstance(shape, list) or not all(isinstance(n, int) and 0 <= n < 2**31 for n in shape):
        raise RecordError("a recorded array has an invalid shape")
    raw = base64.b64decode(data, validate=True)
    item = np.dtype(dtype).newbyteorder("<")
    if len(raw) != item.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise RecordError("a recorded array's bytes do not match its shape")
    array = np.frombuffer(raw, dtype=item).astype(np.dtype(dtype)).reshape(shape)
    if kind == "scalar":
        return array[()]
    if kind == "numpy":
        return array.copy()
    import torch

    return torch.from_numpy(array.copy())


#: The judge reads at most this many record lines: an honest run writes one per probe statement.
MAX_RECORD_LINES = 20_000


@dataclass
class Records:
    """The records of one run, in the order the kernel wrote them: ``[(cell, statement, record), ...]``.

    The order is kept because the judge checks it: probes run once each, in the plan's order, so a
    record out of that order, or a second record of a statement, can only be the student's writing.
    """

    entries: list = field(default_factory=list)
    #: record lines beyond ``MAX_RECORD_LINES`` that were not read
    dropped: int = 0

    @classmethod
    def from_dict(cls, by_key: dict) -> Records:
        """Records from ``{(cell, statement): record}`` (trusted callers: the tests), in that dict's order."""
        return cls([(cell, statement, record) for (cell, statement), record in by_key.items()])


def read_records(text: str) -> Records:
    """The records in a record file's text, in order; lines that are not records are skipped.

    Such lines can only be the student's own writing; at most ``MAX_RECORD_LINES`` lines are parsed,
    and a line that does not start like a record costs no JSON parse (megabytes of blank lines did).
    """
    found = Records()
    parsed = 0
    for line in text.split("\n"):
        if not line.startswith(_RECORD_START):
            continue
        if parsed >= MAX_RECORD_LINES:
            found.dropped += 1
            continue
        parsed += 1
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
            continue
        if not isinstance(record, dict) or not isinstance(record.get("cell"), str):
            continue
        statement = record.get("statement")
        if isinstance(statement, int) and not isinstance(statement, bool):
            found.entries.append((record["cell"], statement, record))
    return found
