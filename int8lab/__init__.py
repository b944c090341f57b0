"""int8lab: the helper library of the int8 post-training quantization notebooks.

Infrastructure only (data, models, training cache, profiling, guards, plots): the functions
students implement live in the notebooks, never here.
"""

from .data import DatasetUnavailableError, cache_dir, dataset_name, load_data
from .guards import Int8RangeError, check_int_range, install_int8_guards
from .models import LAYER_NAMES, Net, NetWithBias
from .profiling import profile_activations
from .training import CacheReadOnlyError, CorruptCheckpointError, evaluate, trained_model

__all__ = [
    "LAYER_NAMES",
    "CacheReadOnlyError",
    "CorruptCheckpointError",
    "DatasetUnavailableError",
    "Int8RangeError",
    "Net",
    "NetWithBias",
    "cache_dir",
    "dataset_name",
    "check_int_range",
    "evaluate",
    "install_int8_guards",
    "load_data",
    "profile_activations",
    "trained_model",
]
