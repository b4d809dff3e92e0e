"""specmd_jax: accelerator-native simulation of MoE expert-cache policies (after SpecMD, 2026).

Public API: :func:`load_trace`, :func:`save_trace`, :mod:`synthetic`, :func:`simulate`,
:func:`sweep`, :func:`lru_mrc`, :func:`list_policies`; byte budgets under BigMoeOnEdge's replay
convention: ``sweep(..., convention="bigmoeonedge", budgets_mib=...)``, :func:`replay_curve`; prefetch + timing: :func:`sweep_prefetch`,
:class:`PrefetchConfig`, :class:`Hardware`, ``HARDWARE_PRESETS``, the execution readings
:class:`Reading` / ``READINGS``, :func:`token_cycle`; miss handling, precision and
routing: :class:`MissConfig`, :class:`Precision`, ``PRECISION_PRESETS``, :class:`RoutingConfig`;
the tunable eviction score: :class:`ScorePolicy`, :func:`sweep_score`, ``tune.tune``,
:class:`TuneConfig`. The package map is in ``docs/architecture.md``. Attributes are imported
lazily so that the pure-Python parts (``core``, ``reference``) load without jax.
"""

import importlib

_LAZY = {
    "load_trace": "core.readers", "save_trace": "core.npz", "ModelShape": "core.trace", "Trace": "core.trace",
    "TraceError": "core.trace", "MODEL_PRESETS": "core.presets", "simulate": "api", "sweep": "api",
    "list_policies": "policies", "capacity_slots": "core.capacity", "METRICS": "core.counters",
    "lru_mrc": "run.mrc", "sweep_prefetch": "api", "PrefetchConfig": "core.prefetch", "make_plan": "core.prefetch",
    "Hardware": "core.timing", "HARDWARE_PRESETS": "core.timing", "MissConfig": "core.miss", "Precision": "core.miss",
    "PRECISION_PRESETS": "core.miss", "RoutingConfig": "core.routing", "ScorePolicy": "core.score",
    "sweep_score": "api", "TuneConfig": "learn.tune", "Reading": "core.timing", "READINGS": "core.timing",
    "token_cycle": "core.capacity", "replay_curve": "api",
}
# short names of the modules users reach for (``sj.synthetic.generate``, ``sj.reference.simulate``)
_MODULES = {
    "synthetic": "core.synthetic", "readers": "core.readers", "trace": "core.trace", "presets": "core.presets",
    "timing": "core.timing", "prefetch": "core.prefetch", "miss": "core.miss", "routing": "core.routing",
    "score": "core.score", "reference": "reference", "systems": "study.systems", "calibrate": "study.calibrate",
    "tune": "learn.tune", "soft": "learn.soft", "policies": "policies",
    "core": "core", "kernels": "kernels", "run": "run", "api": "api", "learn": "learn", "study": "study",
    "config": "config",
}
__all__ = sorted(_LAZY) + sorted(_MODULES)
__version__ = "0.1.0"


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    raise AttributeError(f"module 'specmd_jax' has no attribute {name!r}")
