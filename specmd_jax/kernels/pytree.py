"""Frozen dataclasses registered as jax pytrees (flax.struct-style, without flax)."""

from __future__ import annotations

import dataclasses

import jax


def pytree_dataclass(cls=None, *, meta=()):
    """Freeze ``cls`` and register it as a pytree; fields named in ``meta`` are static."""

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        data = [n for n in names if n not in meta]
        return jax.tree_util.register_dataclass(c, data_fields=data, meta_fields=list(meta))

    return wrap if cls is None else wrap(cls)


def replace(obj, **kw):
    return dataclasses.replace(obj, **kw)
