"""What each probe must cover: the shape of every value the reference solution's probes bind.

A test cell's inputs fix how many results its probes produce: four biases give four quantized
biases, every layer name gives one entry. A student's code runs in the kernel that records
those results, so it could shorten a list of inputs while the probe runs, or write a shorter
record; a check that zips expected values with recorded ones would then check only what is
left. The judge therefore compares every recorded value with the *shape* the reference solution's
record has for the same statement (computed in the grader's own process, from the source
notebook): list and tuple lengths, dict keys, array shapes. Values are never compared here.

A shape is plain data: ``"scalar"``, ``"object"`` (a model or another value the kernel cannot
record: anything may stand there), ``{"array": [dims]}``, ``{"seq": [shapes]}`` or
``{"dict": {key: shape}}``.
"""

from __future__ import annotations

from .records import Unrecorded

SCALAR, OBJECT = "scalar", "object"


def shape_of(value):
    """The shape of a decoded record value (see the module docstring)."""
    if isinstance(value, Unrecorded):
        return OBJECT
    if isinstance(value, list | tuple):
        return {"seq": [shape_of(item) for item in value]}
    if isinstance(value, dict):
        return {"dict": {key: shape_of(item) for key, item in value.items()}}
    dims = _dims(value)
    return SCALAR if not dims else {"array": list(dims)}


def _dims(value) -> tuple[int, ...]:
    """An array's shape; () for a number (decoded records hold nothing else but containers)."""
    return tuple(int(n) for n in getattr(value, "shape", ()))


def _size(value) -> int:
    size = 1
    for n in _dims(value):
        size *= n
    return size


def _kind(value) -> str:
    if isinstance(value, list | tuple):
        return f"a {type(value).__name__} of {len(value)} item{'s' if len(value) != 1 else ''}"
    if isinstance(value, dict):
        return f"a dict with keys {sorted(value)[:6]}"
    if isinstance(value, Unrecorded):
        return f"a {object.__getattribute__(value, '_type')}, which the grader cannot record,"
    dims = _dims(value)
    return f"an array of shape {dims}" if dims else "a single value"


def _expected(shape) -> str:
    if shape == SCALAR:
        return "a single value"
    if "seq" in shape:
        n = len(shape["seq"])
        return f"{n} item{'s' if n != 1 else ''}"
    if "dict" in shape:
        return f"the keys {sorted(shape['dict'])[:6]}"
    return f"shape {tuple(shape['array'])}"


class Coverage:
    """The problems of one recorded value against its expected shape.

    ``missing``: a list, tuple or dict that does not cover what the test's inputs make (fewer items,
    other keys), or an object where a value is expected: the test fails before any check runs.
    ``reshaped``: an array (or a single value) of another shape than the reference's. The checks run
    first, so that an honest mistake (one scale per input channel instead of per output channel) is
    still named as what it is; the test fails after them if they let it pass (a broadcast comparison
    would). The judge's memory and CPU limits bound what such a shape can cost before that.
    """

    def __init__(self):
        self.missing: list[str] = []
        self.reshaped: list[str] = []

    def compare(self, expected, got, where: str) -> None:
        if expected == OBJECT:
            return
        if expected == SCALAR:
            if isinstance(got, list | tuple | dict | Unrecorded):
                self.missing.append(f"{where} is {_kind(got)} where the test expects a single value")
            elif _size(got) > 1:
                self.reshaped.append(f"{where} is {_kind(got)} where the test expects a single value")
            return
        if "seq" in expected:
            items = expected["seq"]
            if not self._sequence(got, len(items), where):
                return
            for index, item in enumerate(items):
                self.compare(item, got[index], f"{where}[{index}]")
            return
        if "dict" in expected:
            keys = expected["dict"]
            if not isinstance(got, dict) or set(got) != set(keys):
                absent = sorted(set(keys) - set(got)) if isinstance(got, dict) else []
                detail = f"; missing {absent[:6]}" if absent else ""
                self.missing.append(f"{where} is {_kind(got)} where the test expects {_expected(expected)}{detail}")
                return
            for key, item in keys.items():
                self.compare(item, got[key], f"{where}[{key!r}]")
            return
        dims = tuple(expected["array"])
        if isinstance(got, dict | Unrecorded):
            self.missing.append(f"{where} is {_kind(got)} where the test expects {_expected(expected)}")
        elif isinstance(got, list | tuple):
            if _nested_dims(got) != dims:  # else a list of numbers in place of a tensor: the checks compare values
                self.reshaped.append(f"{where} is {_kind(got)} where the test expects {_expected(expected)}")
        elif _dims(got) != dims:
            self.reshaped.append(f"{where} is {_kind(got)} where the test expects {_expected(expected)}")

    def _sequence(self, got, length: int, where: str) -> bool:
        if isinstance(got, list | tuple):
            if len(got) == length:
                return True
        elif not isinstance(got, dict | Unrecorded) and _dims(got) and _dims(got)[0] == length:
            return True  # an array in place of a list of rows: its rows are compared one by one
        self.missing.append(f"{where} is {_kind(got)} where the test expects {length} item{'s' if length != 1 else ''}")
        return False


def _nested_dims(value) -> tuple[int, ...] | None:
    """The array shape of nested lists of numbers, or None when they are ragged or hold anything else."""
    if not isinstance(value, list | tuple):
        return () if isinstance(value, bool | int | float) else None
    inner = {_nested_dims(item) for item in value}
    if len(inner) > 1 or None in inner:
        return None
    return (len(value), *(inner.pop() if inner else ()))


def check(expected: dict, values: dict) -> Coverage:
    """Compare each name a probe bound with its expected shape (``expected``: ``{name: shape}``)."""
    coverage = Coverage()
    for name, shape in expected.items():
        if name in values:
            coverage.compare(shape, values[name], name)
    return coverage
