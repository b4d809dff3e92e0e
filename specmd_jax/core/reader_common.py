"""Helpers the text trace readers share: the error naming the file, the line, the field and the
value (a :class:`~specmd_jax.core.limits.TraceError`), integer parsing, layer lists in notes and
the cap on notes kept verbatim."""

from __future__ import annotations

from specmd_jax.core.limits import TraceError

MAX_NOTES = 32   # per-problem / per-pass notes kept verbatim; the rest are summed up in one note


def field_error(path, line, field: str, value, msg: str):
    """Raise a :class:`TraceError` naming file, line, field and value (its repr cut at 200 chars)."""
    v = repr(value)
    if len(v) > 200:
        v = f"{v[:200]}... ({len(v)} chars)"
    raise TraceError(f"{path}:{line}: field '{field}': value {v}: {msg}")


def parse_int(path, line, field: str, s: str) -> int:
    try:
        return int(s)
    except (TypeError, ValueError):
        field_error(path, line, field, s, "not an integer")


def fmt_layers(ls) -> str:
    ls = [int(x) for x in ls]
    s = ", ".join(map(str, ls[:12])) + (f", ... ({len(ls)} in all)" if len(ls) > 12 else "")
    return ("layer " if len(ls) == 1 else "layers ") + s
