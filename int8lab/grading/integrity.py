"""Kernel-side tamper detection: the tests refuse to score once their tools were swapped.

Installed when a grading kernel starts, before any student code: it remembers the functions
the tests compare with (numpy, torch, math, builtins, ``int8lab.checks``), the names the
read-only cells define, and the IPython machinery that reports errors. Every graded test cell
starts (in its hidden part) by calling ``__int8lab_verify_integrity__()``, which raises
``TamperingDetected`` naming what changed, and appends the finding to a log the grader reads
outside the kernel. Code running inside the same process can defeat any such check; this
catches the usual monkeypatches, and the sandbox keeps the hidden tests and other students'
grades out of reach whatever happens here.
"""

from __future__ import annotations

import builtins
import hashlib
import importlib
import os

LOCKED_CELLS_ENV = "INT8LAB_LOCKED_CELLS"
LOG_FD_ENV = "INT8LAB_INTEGRITY_FD"
VERIFY_NAME = "__int8lab_verify_integrity__"

WATCHED = {
    "builtins": [
        "abs",
        "all",
        "any",
        "float",
        "int",
        "isinstance",
        "len",
        "max",
        "min",
        "round",
        "sum",
        "tuple",
        "type",
        "zip",
        "AssertionError",
        "Exception",
    ],
    "math": ["isclose", "isnan", "isfinite"],
    "numpy": [
        "allclose",
        "isclose",
        "array_equal",
        "abs",
        "all",
        "any",
        "isnan",
        "isfinite",
        "round",
        "array",
        "asarray",
        "max",
        "prod",
        "ones",
        "zeros",
        "linspace",
        "concatenate",
    ],
    "numpy.testing": ["assert_allclose", "assert_array_equal", "assert_equal"],
    "torch": [
        "equal",
        "allclose",
        "isclose",
        "round",
        "clamp",
        "floor",
        "zeros",
        "zeros_like",
        "tensor",
        "flatten",
        "no_grad",
    ],
    "torch.testing": ["assert_close"],
    "torch.Tensor": [
        "__eq__",
        "__ne__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "tolist",
        "item",
        "numpy",
        "detach",
        "abs",
        "max",
        "clone",
    ],
    "torch.nn.functional": ["relu", "max_pool2d"],
    "int8lab.checks": [
        "check_close",
        "check_scale",
        "check_true",
        "matching_misconception",
        "explain",
        "CheckFailed",
        "MISCONCEPTIONS",
        "_same",
        "_as_array",
        "_diagnose_integers",
        "_preview",
        "_array",
        "_isclose",
        "_abs",
    ],
    "int8lab.training": ["evaluate", "trained_model", "load_checkpoint"],
    "int8lab.data": ["load_data"],
    "int8lab.profiling": ["profile_activations"],
    "int8lab.guards": ["check_int_range", "diagnose", "install_int8_guards"],
}


class TamperingDetected(AssertionError):
    """The tools a test relies on were replaced; the test gives no points."""


def _resolve(path: str):
    module, _, attribute = path.partition(":")
    try:
        target = importlib.import_module(module)
    except ImportError:
        owner, _, cls = module.rpartition(".")
        target = getattr(importlib.import_module(owner), cls)
    return getattr(target, attribute) if attribute else target


def _fingerprint(obj):
    """What must stay the same: the object, and for a Python function its code and defaults."""
    return (
        obj,
        getattr(obj, "__code__", None),
        getattr(obj, "__defaults__", None),
        getattr(obj, "__kwdefaults__", None),
    )


def _same(old, new) -> bool:
    return new[0] is old[0] and new[1] is old[1] and new[2] == old[2] and new[3] == old[3]


class _Integrity:
    def __init__(self, shell):
        self.shell = shell
        self.watched = {}
        for module, names in WATCHED.items():
            for name in names:
                try:
                    self.watched[f"{module}.{name}"] = (module, name, _fingerprint(_resolve(f"{module}:{name}")))
                except (ImportError, AttributeError):
                    continue
        self.locked = {item for item in os.environ.get(LOCKED_CELLS_ENV, "").split(",") if item}
        self.protected_names: dict[str, tuple] = {}
        self.protected_attributes: dict[tuple[str, str], tuple] = {}
        self.before: dict = {}
        self.log_fd = int(os.environ[LOG_FD_ENV]) if os.environ.get(LOG_FD_ENV) else None
        self.shell_state = self._shell_state()

    def _shell_state(self):
        shell = self.shell
        return {
            "custom exception handler": tuple(getattr(shell, "custom_exceptions", ())),
            "showtraceback": getattr(type(shell).showtraceback, "__code__", None),
            "instance showtraceback": "showtraceback" in vars(shell),
            "input transformers": tuple(id(t) for t in getattr(shell, "input_transformers_post", [])),
            "cleanup transformers": tuple(id(t) for t in shell.input_transformer_manager.cleanup_transforms),
            "line transformers": tuple(id(t) for t in shell.input_transformer_manager.line_transforms),
            "ast transformers": tuple(id(t) for t in getattr(shell, "ast_transformers", [])),
        }

    def pre_run_cell(self, info):
        self.before = dict(self.shell.user_ns)

    def post_run_cell(self, result):
        raw = getattr(result.info, "raw_cell", "") or ""
        if hashlib.sha256(raw.encode()).hexdigest() not in self.locked:
            return
        # Names a read-only cell defined (imports, provided functions and classes) must not be rebound.
        for name, value in self.shell.user_ns.items():
            if name.startswith("_") or (name in self.before and self.before[name] is value):
                continue
            self.protected_names[name] = _fingerprint(value)
            if isinstance(value, type) and value.__module__ == "__main__":
                for attribute, member in vars(value).items():
                    self.protected_attributes[(name, attribute)] = _fingerprint(member)

    def problems(self) -> list[str]:
        found = []
        for label, (module, name, fingerprint) in self.watched.items():
            try:
                current = _fingerprint(_resolve(f"{module}:{name}"))
            except (ImportError, AttributeError):
                found.append(f"{label} was removed")
                continue
            if not _same(fingerprint, current):
                found.append(f"{label} was replaced")
        namespace = self.shell.user_ns
        for name, fingerprint in self.protected_names.items():
            if name in namespace and not _same(fingerprint, _fingerprint(namespace[name])):
                found.append(f"{name} (defined by a read-only cell) was redefined")
        for (cls_name, attribute), fingerprint in self.protected_attributes.items():
            cls = self.protected_names.get(cls_name, (None,))[0]
            if cls is not None and not _same(fingerprint, _fingerprint(vars(cls).get(attribute))):
                found.append(f"{cls_name}.{attribute} (defined by a read-only cell) was replaced")
        state = self._shell_state()
        found += [f"IPython's {key} was changed" for key, value in state.items() if value != self.shell_state[key]]
        callbacks = self.shell.events.callbacks
        if self.pre_run_cell not in callbacks["pre_run_cell"] or self.post_run_cell not in callbacks["post_run_cell"]:
            found.append("the grader's IPython event hooks were removed")
        return found

    def verify(self):
        found = self.problems()
        if not found:
            return
        message = (
            "tampering detected: "
            + "; ".join(found)
            + ". The tests cannot trust their comparisons, so they give no points."
        )
        if self.log_fd is not None:
            try:
                os.write(self.log_fd, (message + "\n").encode())
            except OSError:
                pass
        raise TamperingDetected(message)


def install(shell=None) -> None:
    """Snapshot the tests' tools now and make ``__int8lab_verify_integrity__`` available to every cell."""
    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    integrity = _Integrity(shell)
    shell.events.register("pre_run_cell", integrity.pre_run_cell)
    shell.events.register("post_run_cell", integrity.post_run_cell)
    setattr(builtins, VERIFY_NAME, integrity.verify)
