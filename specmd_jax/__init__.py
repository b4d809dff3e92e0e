"""specmd_jax: accelerator-native simulation of MoE expert-cache policies (after SpecMD, 2026).

Public API: :func:`load_trace`, :func:`save_trace`, :mod:`synthetic`, :func:`simulate`,
:func:`sweep`, :func:`lru_mrc`, :func:`list_policies`.
"""

from . import synthetic
from .api import METRICS, capacity_slots, list_policies, simulate, sweep
from .mrc import lru_mrc
from .presets import MODEL_PRESETS
from .readers import load_trace
from .trace import ModelShape, Trace, TraceError, save_trace

__all__ = ["load_trace", "save_trace", "synthetic", "simulate", "sweep", "lru_mrc", "list_policies",
           "capacity_slots", "METRICS", "MODEL_PRESETS", "ModelShape", "Trace", "TraceError"]
__version__ = "0.1.0"
