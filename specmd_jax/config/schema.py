"""Structured-config schemas of the two hydra apps (``conf/``): typos and wrong types fail at startup.

Plain dataclasses (no hydra import at module level); :func:`register` stores them in hydra's
``ConfigStore`` and is called by ``experiments/run.py`` and ``experiments/prefetch_run.py``
before ``@hydra.main`` composes. The yaml files then extend them:

* the primary configs start their defaults list with ``run_schema`` / ``prefetch_schema``, so
  every top-level key is typed (``seeds=[a]`` -> "Value 'a' ... could not be converted to
  Integer", ``polices=[lru]`` -> "Key 'polices' is not in struct");
* each ``conf/trace/*.yaml`` extends ``schema_synthetic`` or ``schema_file`` (a synthetic knob on
  a file trace, or a misspelt knob, is rejected by name);
* ``model``, ``sweep``, ``hardware``, ``prefetch``, ``miss``, ``precision``, ``routing`` and
  ``system`` are typed nodes of the top-level schema, so every option of those groups is
  checked against it; the last six name the object they build with ``_target_``
  (:mod:`specmd_jax.config.objects` instantiates them).

Value checks that need the library (policy names, fractions in [0, 1], hardware preset names)
stay in :mod:`specmd_jax.config.build` and the apps, and also run before any work starts. Small
closed sets (``mode``, ``engine``) are enums: hydra's message lists the valid values.

Defaults of the synthetic-trace knobs are read from :func:`specmd_jax.core.synthetic.generate`, and
those of the prefetch, miss and routing nodes from the library's own config dataclasses, so the
schemas and the library cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from specmd_jax.core import synthetic
from specmd_jax.core.miss import MissConfig, Precision
from specmd_jax.core.prefetch import PrefetchConfig
from specmd_jax.core.routing import RoutingConfig
from specmd_jax.core.timing import DEFAULT_READING, EXECUTIONS, PINS, PREFETCH_ISSUES, hardware_profiles
from specmd_jax.config.objects import qualname as _qual
from specmd_jax.study.systems import get_system

__all__ = ["ModelSchema", "TraceSchema", "SyntheticTraceSchema", "FileTraceSchema", "SweepSchema",
           "RunSchema", "PrefetchAppSchema", "register"]

_GEN = {k: p.default for k, p in inspect.signature(synthetic.generate).parameters.items()}
_PF, _MISS, _ROUTING = ({f.name: f.default for f in dataclasses.fields(c)} for c in (PrefetchConfig, MissConfig,
                                                                                     RoutingConfig))


class Mode(Enum):
    pinned = "pinned"
    sequential = "sequential"


class Convention(Enum):
    pinned = "pinned"
    bigmoeonedge = "bigmoeonedge"


class RunEngine(Enum):
    auto = "auto"
    scan = "scan"
    stack = "stack"


class PrefetchEngine(Enum):
    auto = "auto"
    jax = "jax"
    reference = "reference"


# the execution reading (specmd_jax.core.timing.Reading): three structural axes of the prefetch app
Execution = Enum("Execution", {v: v for v in EXECUTIONS})
PrefetchIssue = Enum("PrefetchIssue", {v: v for v in PREFETCH_ISSUES})
Pin = Enum("Pin", {v: v for v in PINS})


@dataclass
class ModelSchema:
    """``conf/model``: a preset name, or a model of your own (``model=custom``; all four set).

    Setting any of the shape fields on a preset overrides that field of the preset."""
    name: str = "olmoe-1b-7b"
    num_layers: Optional[int] = None
    num_experts: Optional[int] = None
    top_k: Optional[int] = None
    expert_bytes: Optional[int] = None


@dataclass
class TraceSchema:
    kind: str = MISSING


@dataclass
class SyntheticTraceSchema(TraceSchema):
    """``conf/trace/synthetic*.yaml``, ``calibrated*.yaml``: keyword args of ``synthetic.generate``."""
    kind: str = "synthetic"
    calibrated: bool = False          # true: the fitted knobs of specmd_jax.study.calibrate replace the four below
    model: Any = _GEN["model"]        # a preset name or the `model` node (${model})
    num_requests: int = _GEN["num_requests"]
    prompt_len: int = _GEN["prompt_len"]
    gen_len: int = _GEN["gen_len"]
    skew: Any = _GEN["skew"]                  # a number or one per layer
    reuse: float = _GEN["reuse"]
    cross_layer: Any = _GEN["cross_layer"]    # a number or one per layer
    rank_coupling: float = _GEN["rank_coupling"]
    seed: int = _GEN["seed"]
    with_weights: bool = _GEN["with_weights"]
    pred_noise: Optional[float] = _GEN["pred_noise"]
    with_logits: bool = _GEN["with_logits"]


@dataclass
class FileTraceSchema(TraceSchema):
    """``conf/trace/file.yaml``, ``*_real.yaml``: a trace file (.npz, .csv route_trace v1, .jsonl)."""
    kind: str = "file"
    path: str = MISSING


@dataclass
class GridSchema:
    start: float = MISSING
    stop: float = MISSING
    num: int = MISSING


@dataclass
class SweepSchema:
    """``conf/sweep``: exactly one set (checked by ``resolve_capacities``); the byte budgets
    (``budgets_mib``, ``capacity_bytes``) are the ``convention=bigmoeonedge`` run's sizes."""
    capacities: Optional[List[int]] = None
    fractions: Optional[List[float]] = None
    grid: Optional[GridSchema] = None
    budgets_mib: Optional[List[float]] = None
    capacity_bytes: Optional[List[int]] = None


@dataclass
class HardwareSchema:
    _target_: str = _qual(hardware_profiles)
    profiles: List[str] = MISSING


@dataclass
class SystemSchema:
    _target_: str = _qual(get_system)
    name: str = MISSING


@dataclass
class PrefetchSchema:
    """``conf/prefetch``: :class:`specmd_jax.core.prefetch.PrefetchConfig` (its defaults) plus ``none``."""
    _target_: str = _qual(PrefetchConfig)
    predictor: str = _PF["predictor"]
    selector: str = _PF["selector"]
    depth: int = _PF["depth"]
    overfetch: float = _PF["overfetch"]
    percentile: float = _PF["percentile"]
    recall: float = _PF["recall"]
    precision: float = _PF["precision"]
    seed: int = _PF["seed"]
    none: bool = False


@dataclass
class MissSchema:
    """``conf/miss``: :class:`specmd_jax.core.miss.MissConfig` (its defaults); a list in
    ``percentile`` or ``rank_threshold`` is one vmapped axis."""
    _target_: str = _qual(MissConfig)
    policy: str = _MISS["policy"]
    percentile: Any = _MISS["percentile"]
    degrade_level: int = _MISS["degrade_level"]
    thresholds: List[float] = field(default_factory=lambda: list(_MISS["thresholds"]))
    rank_threshold: Any = _MISS["rank_threshold"]


@dataclass
class PrecisionSchema:
    _target_: str = _qual(Precision.from_fractions)
    level_fractions: List[float] = field(default_factory=lambda: [1.0])
    stored_bits: int = 16


@dataclass
class RoutingSchema:
    """``conf/routing``: :class:`specmd_jax.core.routing.RoutingConfig`; a list in ``lam`` is one vmapped axis."""
    _target_: str = _qual(RoutingConfig)
    policy: str = _ROUTING["policy"]
    lam: Any = _ROUTING["lam"]


@dataclass
class PathsSchema:
    runs: str = MISSING        # single runs go under it (conf/hydra/default.yaml)
    multiruns: str = MISSING   # multiruns go under it


@dataclass
class _Common:
    trace: TraceSchema = MISSING
    paths: PathsSchema = field(default_factory=PathsSchema)
    model: ModelSchema = field(default_factory=ModelSchema)
    sweep: SweepSchema = field(default_factory=SweepSchema)
    policies: List[str] = MISSING          # set by the `policy` group (@package _global_) or policies=[...]
    progress: bool = True
    output_dir: str = MISSING
    compilation_cache: Optional[str] = "outputs/.jax_cache"
    score_policy: Optional[str] = None     # run app, policy `score`: a ScorePolicy JSON (experiments/tune_score.py)
    score_sensitivity: Optional[str] = None  # run app, policy `score`: a hardware preset -> TTFT/TPOT and their gradients


@dataclass
class RunSchema(_Common):
    """``conf/config.yaml`` (``experiments/run.py``)."""
    convention: Convention = Convention.pinned
    mode: Mode = Mode.pinned
    partitioned: bool = False
    seeds: List[int] = field(default_factory=lambda: [0])
    decay_periods: List[int] = field(default_factory=lambda: [0])
    unroll_layers: Optional[bool] = None
    engine: RunEngine = RunEngine.auto


@dataclass
class PrefetchAppSchema(_Common):
    """``conf/prefetch_app.yaml`` (``experiments/prefetch_run.py``)."""
    hardware: HardwareSchema = field(default_factory=HardwareSchema)
    system: Optional[SystemSchema] = None
    ls_dropin: bool = True
    prefetch: PrefetchSchema = field(default_factory=PrefetchSchema)
    miss: MissSchema = field(default_factory=MissSchema)
    precision: PrecisionSchema = field(default_factory=PrecisionSchema)
    routing: RoutingSchema = field(default_factory=RoutingSchema)
    engine: PrefetchEngine = PrefetchEngine.auto
    timing: str = "async"
    execution: Execution = Execution[DEFAULT_READING.execution]
    prefetch_issue: PrefetchIssue = PrefetchIssue[DEFAULT_READING.prefetch_issue]
    pin: Pin = Pin[DEFAULT_READING.pin]


def register() -> None:
    """Store the schemas in hydra's ConfigStore (idempotent): ``run_schema``,
    ``prefetch_schema`` and, in group ``trace``, ``schema_synthetic`` / ``schema_file``."""
    from hydra.core.config_store import ConfigStore
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunSchema)
    cs.store(name="prefetch_schema", node=PrefetchAppSchema)
    cs.store(group="trace", name="schema_synthetic", node=SyntheticTraceSchema)
    cs.store(group="trace", name="schema_file", node=FileTraceSchema)
