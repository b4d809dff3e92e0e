"""specmd_jax: accelerator-native simulation of MoE expert-cache policies (after SpecMD, 2026).

Public API: :func:`load_trace`, :func:`save_trace`, :mod:`synthetic`, :func:`simulate`,
:func:`sweep`, :func:`lru_mrc`, :func:`list_policies`; prefetch + timing: :func:`sweep_prefetch`,
:class:`PrefetchConfig`, :class:`Hardware`, ``HARDWARE_PRESETS``, the execution readings
:class:`Reading` / ``READINGS``, :func:`token_cycle`; miss handling, precision and
routing: :class:`MissConfig`, :class:`Precision`, ``PRECISION_PRESETS``, :class:`RoutingConfig`;
the tunable eviction score: :class:`ScorePolicy`, :func:`sweep_score`, ``tune.tune``,
:class:`TuneConfig` (modules ``score``, ``engine_score``, ``soft``, ``tune``). Attributes are imported lazily so that
the pure-Python parts (``trace``, ``readers``, ``synthetic``, ``reference``) load without jax.
"""

import importlib

_LAZY = {
    "load_trace": "readers", "save_trace": "trace", "ModelShape": "trace", "Trace": "trace",
    "TraceError": "trace", "MODEL_PRESETS": "presets", "simulate": "api", "sweep": "api",
    "list_policies": "api", "capacity_slots": "api", "METRICS": "api", "lru_mrc": "mrc",
    "sweep_prefetch": "api_prefetch", "PrefetchConfig": "prefetch", "make_plan": "prefetch",
    "Hardware": "timing", "HARDWARE_PRESETS": "timing", "MissConfig": "miss", "Precision": "miss",
    "PRECISION_PRESETS": "miss", "RoutingConfig": "routing", "ScorePolicy": "score", "sweep_score": "engine_score",
    "TuneConfig": "tune", "Reading": "timing", "READINGS": "timing", "token_cycle": "api",
}
__all__ = sorted(_LAZY) + ["synthetic", "reference"]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("synthetic", "reference", "readers", "trace", "presets", "engine", "runner", "mrc", "api", "visits",
                "semantics", "stack", "prefetch", "timing", "reference_timed", "engine_pf", "prefetch_runner",
                "api_prefetch", "miss", "routing", "systems", "engine_async", "score", "engine_score", "soft",
                "tune", "calibrate", "turns"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'specmd_jax' has no attribute {name!r}")
