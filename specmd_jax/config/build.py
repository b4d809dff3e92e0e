"""Turn the hydra entry point's config (as plain dicts) into library calls.

"Hydra selects, the library computes": ``experiments/run.py`` converts its
``DictConfig`` with ``OmegaConf.to_container(cfg, resolve=True)`` and hands the plain dicts to
the functions here, so this module imports no hydra/omegaconf and is unit-testable.

Config groups (``conf/``):

* ``trace``: ``{kind: synthetic, model, num_requests, prompt_len, gen_len, skew, reuse,
  cross_layer, seed}`` -> :func:`specmd_jax.core.synthetic.generate`, or ``{kind: file, path}`` ->
  :func:`specmd_jax.load_trace`. ``model`` is a preset name or the ``model`` group's node
  (``{name, num_layers, num_experts, top_k, expert_bytes}``, see :func:`model_shape`).
* ``sweep``: exactly one of ``capacities`` (slots), ``fractions`` (of all expert bytes) or
  ``grid: {start, stop, num}`` (``num`` evenly spaced fractions, ends included).

Every user error is a :class:`ConfigError` naming the config key (``trace.path``,
``sweep.fractions``, ...); a trace file that fails to load raises the reader's
:class:`~specmd_jax.core.trace.TraceError` unchanged (it names file, line, field and value; the
readers also refuse bytes that are not UTF-8); a file that cannot be read raises a ``TraceError``
naming it.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from specmd_jax.core import synthetic
from specmd_jax.core.capacity import capacity_slots
from specmd_jax.core.checks import byte_budgets
from specmd_jax.policies import list_policies
from specmd_jax.core.presets import MODEL_PRESETS
from specmd_jax.core.readers import load_trace
from specmd_jax.core.trace import ModelShape, Trace, TraceError
from specmd_jax.study.calibrate import calibrated_knobs

__all__ = ["ConfigError", "build_trace", "model_shape", "resolve_capacities", "resolve_policies", "MODES"]

MODES = ("pinned", "sequential")
_MISSING = (None, "", "???")  # "???" is OmegaConf's MISSING left as text by to_container
SYNTHETIC_KNOBS = tuple(p for p in inspect.signature(synthetic.generate).parameters)
SWEEP_KEYS = ("capacities", "fractions", "grid", "budgets_mib", "capacity_bytes")


def enable_compilation_cache(path) -> Optional[str]:
    """Turn on jax's persistent compilation cache in ``path`` (created; ``None`` or ``""``: off).

    Every compiled program (one per policy and shape) is then written there and reused by later
    runs, so a repeated or resumed study skips compilation. Returns the absolute path or None."""
    if path in (None, "", False):
        return None
    import jax
    p = Path(str(path)).expanduser().resolve()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"compilation_cache={str(path)!r}: cannot create {p} ({e.strerror}); "
                          "pass compilation_cache=null to run without the cache") from None
    jax.config.update("jax_compilation_cache_dir", str(p))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # our programs compile in < 1 s
    return str(p)


class ConfigError(ValueError):
    """A config value the entry point cannot use; the message names the key."""


def _get(d: Any, name: str) -> Mapping:
    if d is None:
        raise ConfigError(f"config group '{name}' is missing (select one, e.g. {name}=...)")
    if not isinstance(d, Mapping):
        raise ConfigError(f"'{name}' must be a mapping, got {type(d).__name__}: {d!r}")
    return d


SHAPE_FIELDS = ("num_layers", "num_experts", "top_k", "expert_bytes")


def model_shape(cfg_model: Any):
    """The ``model`` argument of :func:`synthetic.generate` from the ``model`` config node.

    Args:
        cfg_model: a preset name (str), or ``{name, num_layers, num_experts, top_k,
            expert_bytes}``. Shape fields left null take the preset's values; a name that is not
            a preset needs all four (``model=custom``).

    Returns:
        The preset name (no field set) or a :class:`ModelShape`.

    Raises:
        ConfigError: a missing or non-positive shape field; the message names ``model.<field>``.
    """
    if isinstance(cfg_model, str) or cfg_model is None:
        return cfg_model if cfg_model is not None else "olmoe-1b-7b"
    if not isinstance(cfg_model, Mapping):
        raise ConfigError(f"model must be a preset name or a mapping, got {cfg_model!r}")
    m = dict(cfg_model)
    name = m.pop("name", None)
    bad = sorted(set(m) - set(SHAPE_FIELDS))
    if bad or name in _MISSING:
        raise ConfigError(f"model needs a name and only {', '.join(SHAPE_FIELDS)}; got {cfg_model!r}")
    given = {k: v for k, v in m.items() if v not in _MISSING}
    base = MODEL_PRESETS.get(str(name).lower())
    if not given and base is not None:
        return str(name)
    vals = {}
    for k in SHAPE_FIELDS:
        v = given.get(k, getattr(base, k) if base is not None else None)
        if v is None:
            raise ConfigError(f"model.{k} is required for model {name!r} (not a preset: set "
                              f"{', '.join('model.' + f for f in SHAPE_FIELDS)}; presets: {', '.join(MODEL_PRESETS)})")
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"model.{k} must be an integer >= 1, got {v!r}")
        vals[k] = int(v)
    if vals["top_k"] > vals["num_experts"]:
        raise ConfigError(f"model.top_k ({vals['top_k']}) must be <= model.num_experts ({vals['num_experts']})")
    try:
        return ModelShape(str(name), vals["num_layers"], vals["num_experts"], vals["top_k"], vals["expert_bytes"])
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None


def build_trace(cfg_trace: Mapping) -> Trace:
    """The trace that ``cfg_trace`` (the ``trace`` config group, a plain dict) describes.

    Args:
        cfg_trace: ``{"kind": "synthetic", <keyword args of synthetic.generate>}`` or
            ``{"kind": "file", "path": "<.npz|.csv|.jsonl>"}``.

    Returns:
        The generated or loaded :class:`Trace`.

    Raises:
        ConfigError: unknown ``trace.kind``, missing ``trace.path``, unknown keys, or a
            synthetic knob out of range (the generator's message, prefixed with ``trace.``).
        TraceError: the trace file failed to load (the reader's message, unchanged).
    """
    t = dict(_get(cfg_trace, "trace"))
    kind = t.pop("kind", None)
    if kind == "synthetic":
        calibrated = bool(t.pop("calibrated", False))
        bad = sorted(set(t) - set(SYNTHETIC_KNOBS))
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join('trace.' + k for k in bad)} for trace.kind=synthetic; "
                              f"valid: {', '.join(SYNTHETIC_KNOBS + ('calibrated',))}")
        t["model"] = model_shape(t.get("model"))
        if calibrated:  # the fitted popularity / layer-coupling / reuse knobs of the model
            m = t["model"]
            if isinstance(m, ModelShape) and MODEL_PRESETS.get(m.name) != m:
                raise ConfigError(f"trace.calibrated=true needs a preset model's own shape; model {m} was changed "
                                  f"or is custom (its fit would not apply)")
            try:
                t.update(calibrated_knobs(m.name if isinstance(m, ModelShape) else str(m)))
            except KeyError as e:
                raise ConfigError(f"trace.calibrated=true: {e.args[0]}") from None
        try:
            return synthetic.generate(**t)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"trace (synthetic): {e}") from e
    if kind == "file":
        bad = sorted(set(t) - {"path"})
        if bad:
            raise ConfigError(f"unknown key(s) {', '.join('trace.' + k for k in bad)} for trace.kind=file; valid: path")
        path = t.get("path")
        if path in _MISSING:
            raise ConfigError("trace.path is required for trace.kind=file: pass trace.path=/path/to/trace"
                              " (.npz canonical, .csv route_trace v1, or .jsonl)")
        try:
            return load_trace(str(path))  # TraceError: the reader's file/line/field/value text
        except TraceError as e:
            if Path(str(path)).is_file():
                raise
            raise TraceError(f"{e} (trace.path={str(path)!r}; a relative path resolves against {os.getcwd()}; "
                             f"the *_real trace configs look under $SPECMD_TRACES, else ../shared/traces "
                             f"next to the launch directory)") from e
        except OSError as e:  # a directory, a file without read permission, ...
            raise TraceError(f"{path}: cannot read the trace ({e.strerror}; trace.path={str(path)!r})") from None
    raise ConfigError(f"unknown trace.kind {kind!r}; valid: synthetic, file")


def _as_list(v: Any, key: str) -> list:
    if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
        v = [v]
    v = list(v)
    if not v:
        raise ConfigError(f"{key} is empty")
    return v


def resolve_capacities(trace: Trace, cfg_sweep: Mapping) -> dict:
    """Cache sizes for :func:`specmd_jax.sweep` from the ``sweep`` config group (a plain dict).

    Args:
        trace: the trace (fractions are checked against it: ``floor(f * L * E)`` slots).
        cfg_sweep: exactly one of ``capacities`` (ints >= 0), ``fractions`` (floats in [0, 1]),
            ``grid`` (``{start, stop, num}``: ``num`` evenly spaced fractions from ``start``
            to ``stop`` inclusive), ``budgets_mib`` or ``capacity_bytes`` set; the others null or absent.

    Returns:
        ``{"capacities": [int, ...]}``, ``{"fractions": [float, ...]}``, ``{"budgets_mib": [float, ...]}``
        or ``{"capacity_bytes": [int, ...]}`` (byte budgets), ready for
        ``sweep(trace, policy, **result)``.

    Raises:
        ConfigError: none or several of the keys set, unknown keys, or bad values.
    """
    s = dict(_get(cfg_sweep, "sweep"))
    bad = sorted(set(s) - set(SWEEP_KEYS))
    if bad:
        raise ConfigError(f"unknown key(s) {', '.join('sweep.' + k for k in bad)}; valid: "
                          f"{', '.join('sweep.' + k for k in SWEEP_KEYS)}")
    given = [k for k in SWEEP_KEYS if s.get(k) is not None]
    if len(given) != 1:
        what = "none is set" if not given else " and ".join("sweep." + k for k in given) + " are set"
        raise ConfigError(f"set exactly one of sweep.capacities (slots), sweep.fractions (of all expert bytes), "
                          f"sweep.grid ({{start, stop, num}}), sweep.budgets_mib or sweep.capacity_bytes: {what}. "
                          f"Null the others, e.g. sweep.fractions=null sweep.capacities=[16,64]")
    key = given[0]
    if key in ("budgets_mib", "capacity_bytes"):
        vals = _as_list(s[key], "sweep." + key)
        try:
            byte_budgets(**{key: vals})
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sweep.{key}: {e}") from None
        return {key: [int(v) if key == "capacity_bytes" else float(v) for v in vals]}
    if key == "capacities":
        caps = _as_list(s[key], "sweep.capacities")
        out = []
        for c in caps:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer, float)) or int(c) != c or c < 0:
                raise ConfigError(f"sweep.capacities must be integers >= 0 (slots), got {c!r}")
            out.append(int(c))
        return {"capacities": out}
    if key == "grid":
        g = s[key]
        if not isinstance(g, Mapping) or set(g) != {"start", "stop", "num"}:
            raise ConfigError(f"sweep.grid must be {{start, stop, num}}, got {g!r}")
        num = g["num"]
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
            raise ConfigError(f"sweep.grid.num must be an integer >= 1, got {num!r}")
        try:
            fr = np.linspace(float(g["start"]), float(g["stop"]), int(num)).tolist()
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sweep.grid.start/stop must be numbers, got {g!r}") from e
        where = "sweep.grid"
    else:
        fr = _as_list(s[key], "sweep.fractions")
        where = "sweep.fractions"
    try:
        fr = [float(f) for f in fr]
        capacity_slots(trace, fr)  # validates: finite, in [0, 1]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e
    return {"fractions": fr}


def resolve_policies(policies: Any, policy: Optional[str] = None, mode: str = "pinned",
                     extra: Sequence[str] = ()) -> list[str]:
    """The policy names to run: ``policy`` (the single-policy shortcut) if set, else ``policies``.
    ``extra``: names the caller handles itself (the run app's ``score``).

    Raises:
        ConfigError: empty list, unknown policy name or mode (the message lists valid names).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    names = [policy] if policy not in (None, "") else _as_list(policies, "policies")
    known = list(list_policies()) + list(extra)
    out = []
    for p in names:
        p = str(p).lower()
        if p not in known:
            raise ConfigError(f"unknown policy {p!r}; valid: {', '.join(known)}")
        if p not in out:
            out.append(p)
    return out
