"""Results of int8lab's costly pure functions, remembered while the judge judges (and never anywhere else).

The judge computes the same reference values for every submission of an assignment: notebook 6's tests
quantize the trained network with PyTorch's engine, notebook 4's profile its activations, notebook 2's
evaluate it. Within ``remembering()`` (``judge.Judge.judge``), a call of a function marked ``@pure`` gives
a private copy of an earlier call's result when everything the call can read digests the same:

  - its arguments, by content: every tensor and array by a SHA-256 of its bytes (with its dtype and shape),
    everything else by pickling it (a module with its parameters, buffers, hooks and training flag; a data
    loader with its dataset, sampler and generator); an argument that cannot be pickled is never remembered;
  - the states of the random generators it can draw from: its arguments' torch.Generator objects and the
    global ones of torch, numpy and ``random``;
  - the global settings such a function may read: the quantized engine, grad mode, the default dtype, the
    thread count, the deterministic and matmul settings.

A call is remembered only if it left its arguments and those settings as it found them (digested again
after the first call); what it did to the generators (a DataLoader's iteration draws a seed from its own
generator, or from torch's) is kept and done again on each later call. So a remembered call gives the
result and leaves the state the call itself would have: the judge's verdicts are the same with or without
this memo. A value derived from a student's record can be an argument too: it is digested like any other,
and only an equal value (by SHA-256) can find an earlier result.

Only functions whose result shares no object with their arguments are marked (the copy would split them).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import hashlib
import io
import pickle
import random
from collections import OrderedDict

import numpy as np
import torch

#: Results kept per process, the most recently used first out of reach of eviction (profiled activations of
#: 400 images are about 4.5 MB).
MAX_RESULTS = 16

_ACTIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("int8lab_memo_active", default=False)
_RESULTS: OrderedDict[bytes, object] = OrderedDict()
_CHANGING: set[bytes] = set()  # calls seen changing what they read: run every time, not digested twice again
statistics = {"remembered": 0, "computed": 0, "not remembered": 0}


class _NotDigestible(Exception):
    """An argument the digest cannot stand for: the call runs, unremembered."""


#: What pickling raises for what it cannot pickle. Anything else (the judge's CPU limit, raised by a signal
#: handler wherever the time runs out) goes through: caught, it would let the call run without its limit.
_PICKLING_ERRORS = (pickle.PicklingError, TypeError, AttributeError, ValueError, NotImplementedError, RuntimeError)
#: Bytes of tensors and arrays a digest reads at most: beyond, the call runs unremembered (hashing CIFAR-10's
#: 614 MB of training images would cost more than the profiling it could save).
MAX_DIGESTED_BYTES = 64 << 20


@contextlib.contextmanager
def remembering():
    """Within the block, ``@pure`` functions remember their results (the judge's judgement)."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Within the block, the global generators of torch, numpy and ``random`` start from ``seed``; after it,
    they and the quantized engine (which ``torch_int8_model`` sets) are as they were. Each judgement starts so:
    a draw from them gives the same numbers whatever the process judged before, and the memo's keys (which
    hold those states and settings) recur."""
    saved, engine = _global_generators(), torch.backends.quantized.engine
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        _set_global_generators(saved)
        torch.backends.quantized.engine = engine


def forget() -> None:
    """Drop every remembered result and zero the counts."""
    _RESULTS.clear()
    _CHANGING.clear()
    statistics.update(dict.fromkeys(statistics, 0))


def pure(function):
    """Mark ``function`` as pure: its result depends only on its arguments, the settings ``_settings`` lists
    and the generators it draws from, and shares no object with its arguments (see the module's docstring)."""

    @functools.wraps(function)
    def remembered(*args, **kwargs):
        if not _ACTIVE.get():
            return function(*args, **kwargs)
        try:
            before = _Reading(function, args, kwargs)
        except _NotDigestible:
            statistics["not remembered"] += 1
            return function(*args, **kwargs)
        if before.key in _RESULTS:
            _RESULTS.move_to_end(before.key)
            statistics["remembered"] += 1
            result, generator_states, global_states = _RESULTS[before.key]
            # What the call did to the generators it read (a DataLoader's iteration draws a seed from its own
            # generator, or torch's), as it did it the first time.
            for generator, state in zip(before.generators, generator_states, strict=True):
                generator.set_state(state)
            _set_global_generators(global_states)
            return copy.deepcopy(result)
        result = function(*args, **kwargs)
        statistics["computed"] += 1
        if before.key in _CHANGING:
            return result
        try:
            after = _Reading(function, args, kwargs)
            same_generators = [id(g) for g in after.generators] == [id(g) for g in before.generators]
            unchanged = after.fixed == before.fixed and same_generators
            kept = copy.deepcopy(result) if unchanged else None
        except (_NotDigestible, copy.Error, *_PICKLING_ERRORS):
            unchanged = False
        if not unchanged:  # it changed an argument or a setting: doing that again needs the call itself
            _CHANGING.add(before.key)
            return result
        _RESULTS[before.key] = (kept, [g.get_state() for g in after.generators], _global_generators())
        while len(_RESULTS) > MAX_RESULTS:
            _RESULTS.popitem(last=False)
        return result

    return remembered


def _global_generators() -> tuple:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_global_generators(states: tuple) -> None:
    torch.set_rng_state(states[0])
    np.random.set_state(states[1])
    random.setstate(states[2])


def _settings() -> tuple:
    """The global settings a marked function may read and must leave as they were."""
    return (
        torch.backends.quantized.engine,
        torch.is_grad_enabled(),
        torch.get_default_dtype(),
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.get_float32_matmul_precision(),
    )


class _Reading:
    """What a call can read, digested: ``fixed`` (the function, its arguments and the settings, with the
    generators' states left out), ``key`` (the same with the states of the generators it reads: its
    arguments' and the global ones), and ``generators`` (the arguments' torch.Generator objects, in order)."""

    def __init__(self, function, args, kwargs):
        buffer = io.BytesIO()
        digester = _Digester(buffer)
        try:
            digester.dump((function.__module__, function.__qualname__, args, sorted(kwargs.items()), _settings()))
            states = io.BytesIO()
            _Digester(states).dump(([g.get_state() for g in digester.generators], _global_generators()))
        except _PICKLING_ERRORS as exc:  # a lambda, a local class, an open file...: not remembered
            raise _NotDigestible(repr(exc)) from exc
        self.fixed = hashlib.sha256(buffer.getbuffer()).digest()
        self.key = hashlib.sha256(self.fixed + hashlib.sha256(states.getbuffer()).digest()).digest()
        self.generators = digester.generators


def _content(kind: str, dtype: str, shape: tuple, sha256: str) -> str:
    """What a tensor or an array stands for in the digest: its kind, dtype, shape and the SHA-256 of its bytes."""
    return f"{kind} {dtype} {shape} {sha256}"


class _Digester(pickle.Pickler):
    """Pickles for a digest: tensors and arrays by the SHA-256 of their bytes, not their storage; each
    torch.Generator as its place in ``generators`` (its state is digested apart)."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.generators: list[torch.Generator] = []
        self.digested = 0

    def _count(self, size: int) -> None:
        self.digested += size
        if self.digested > MAX_DIGESTED_BYTES:
            raise _NotDigestible(f"more than {MAX_DIGESTED_BYTES} bytes of tensors and arrays")

    def reducer_override(self, obj):
        if isinstance(obj, torch.Generator):
            if obj.device.type != "cpu":
                raise _NotDigestible(f"a generator on {obj.device}")
            self.generators.append(obj)
            return _content, ("generator", "", (), str(len(self.generators)))
        if isinstance(obj, torch.Tensor):
            if type(obj) not in (torch.Tensor, torch.nn.Parameter) or obj.layout != torch.strided or obj.is_quantized:
                raise _NotDigestible(f"a {type(obj).__name__} of layout {obj.layout}")
            if obj.device.type != "cpu":
                raise _NotDigestible(f"a tensor on {obj.device}")
            self._count(obj.numel() * obj.element_size())
            flat = obj.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            kind = f"{type(obj).__name__} requires_grad={obj.requires_grad} stride={obj.stride()}"
            return _content, (kind, str(obj.dtype), tuple(obj.shape), hashlib.sha256(flat).hexdigest())
        if isinstance(obj, np.ndarray):
            if obj.dtype.hasobject or obj.dtype.fields is not None or type(obj) is not np.ndarray:
                raise _NotDigestible(f"a {type(obj).__name__} of dtype {obj.dtype}")
            self._count(obj.nbytes)
            flat = np.ascontiguousarray(obj).reshape(-1).view(np.uint8)
            return _content, ("ndarray", obj.dtype.str, obj.shape, hashlib.sha256(flat).hexdigest())
        return NotImplemented
