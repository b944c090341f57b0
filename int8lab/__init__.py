"""int8lab: the helper library of the int8 post-training quantization notebooks.

Infrastructure only (data, models, training cache, profiling, guards, plots): the functions
students implement live in the notebooks, never here.

The names below are imported when first used (``from int8lab import trained_model`` as ever): importing
``int8lab.grading``'s light modules must not import torch (a Dask scheduler imports the modules of the tasks
it is sent: ``int8lab/grading/tasks.py``).
"""

from importlib import import_module as _import_module

#: Each public name and the module that defines it.
_WHERE = {
    "DatasetUnavailableError": "data",
    "cache_dir": "data",
    "dataset_name": "data",
    "load_data": "data",
    "Int8RangeError": "guards",
    "check_int_range": "guards",
    "install_int8_guards": "guards",
    "LAYER_NAMES": "models",
    "Net": "models",
    "NetBN": "models",
    "NetWithBias": "models",
    "profile_activations": "profiling",
    "CacheReadOnlyError": "training",
    "CorruptCheckpointError": "training",
    "evaluate": "training",
    "trained_model": "training",
}

__all__ = sorted(_WHERE)


#: The modules that importing int8lab imported before its names became lazy (``int8lab.data`` and so on).
_MODULES = frozenset(_WHERE.values())


def __getattr__(name: str):
    if name in _MODULES:
        return _import_module(f".{name}", __name__)  # the import binds it here
    if name not in _WHERE:
        raise AttributeError(f"module 'int8lab' has no attribute {name!r}")
    value = getattr(_import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE, *_MODULES})
