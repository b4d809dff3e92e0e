"""Library objects from config nodes that name their class with ``_target_`` (hydra's ``instantiate``).

The prefetch app's groups each build one kind of object: ``hardware`` a list of
:class:`~specmd_jax.core.timing.Hardware` presets, ``prefetch`` a
:class:`~specmd_jax.core.prefetch.PrefetchConfig`, ``miss`` a list of
:class:`~specmd_jax.core.miss.MissConfig`, ``precision`` a :class:`~specmd_jax.core.miss.Precision`,
``routing`` a list of :class:`~specmd_jax.core.routing.RoutingConfig`, ``system`` a
:class:`~specmd_jax.study.systems.System`. A list in a numeric field the kernels vmap
(``miss.rank_threshold``, ``miss.percentile``, ``routing.lam``) is one configuration axis: one
object per value. Every error is a :class:`~specmd_jax.config.build.ConfigError` naming the group.
"""

from __future__ import annotations

import itertools
from typing import Any, Mapping, Optional, Sequence

from specmd_jax.config.build import ConfigError


def qualname(obj) -> str:
    """The ``_target_`` string of a class, function or classmethod."""
    owner = getattr(obj, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__module__}.{owner.__qualname__}.{obj.__name__}"
    return f"{obj.__module__}.{obj.__qualname__}"


def instantiate_each(group: str, node: Optional[Mapping], axes: Sequence[str] = (), drop: Sequence[str] = (),
                     **override) -> list:
    """One object per combination of the list values in ``axes`` (the other fields as given), built
    by ``hydra.utils.instantiate`` from ``node["_target_"]``; ``drop``: keys that are not arguments;
    ``override``: fields replaced (a prior system's choices)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    if not isinstance(node, Mapping) or not node.get("_target_"):
        raise ConfigError(f"{group}: the node names no _target_ (the class it builds)")
    kw = {k: v for k, v in node.items() if k not in drop}
    kw.update(override)
    grid = [(a, v if isinstance(v, (list, tuple)) else [v]) for a, v in ((a, kw.pop(a)) for a in axes if a in kw)]
    out = []
    for combo in itertools.product(*(vals for _, vals in grid)):
        cfg = {**kw, **{a: x for (a, _), x in zip(grid, combo)}, "_convert_": "all"}
        try:
            out.append(instantiate(cfg))
        except InstantiationException as e:
            raise ConfigError(f"{group}: {e.__cause__ or e}") from None
    return out


def hardware(node: Mapping) -> list:
    """``hardware``: the named presets."""
    return instantiate_each("hardware", node)[0]


def prefetch(node: Mapping, system=None) -> Any:
    """``prefetch``: a :class:`PrefetchConfig`, ``None`` with ``none: true``; a system sets its selector."""
    if node.get("none", False):
        return None
    if system is not None:
        kw = {k: v for k, v in node.items() if k not in ("_target_", "none", "selector")}
        return system.prefetch(**kw)
    return instantiate_each("prefetch", node, drop=("none",))[0]


def misses(node: Mapping, system=None) -> list:
    """``miss``: one :class:`MissConfig` per (rank_threshold, percentile) value."""
    over = {"policy": system.miss} if system is not None else {}
    return instantiate_each("miss", node, axes=("rank_threshold", "percentile"), **over)


def precision(node: Mapping, system=None) -> Any:
    """``precision``: levels from ``level_fractions`` of ``stored_bits`` (a system sets its levels)."""
    over = {"level_fractions": list(system.level_fractions)} if system is not None else {}
    return instantiate_each("precision", node, **over)[0]


def routings(node: Mapping, system=None) -> list:
    """``routing``: one :class:`RoutingConfig` per ``lam`` value (a system sets its own routing)."""
    if system is not None:
        return [system.routing_config()]
    return instantiate_each("routing", node, axes=("lam",))


def system(node: Optional[Mapping]) -> Any:
    """``system``: the prior system named, or ``None``."""
    return instantiate_each("system", node)[0] if node else None
