"""The canonical on-disk trace format: a versioned npz (``format_version`` =
:data:`~specmd_jax.core.trace.FORMAT_VERSION`) holding the :class:`~specmd_jax.core.trace.Trace`
arrays under their field names plus the model shape and provenance. :func:`save_trace` writes
it whole or not at all; :func:`load_npz` checks every member's ``.npy`` header against ``meta``,
the other members and :mod:`specmd_jax.core.limits` before it reads any data."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from specmd_jax.core.limits import (MAX_META_CHARS, TraceError, check_file, grid_error, loads_json, max_npz_bytes,
                                    npy_header, sniff)
from specmd_jax.core.coerce import as_float, as_int, fail
from specmd_jax.core.trace import FORMAT_VERSION, READABLE_VERSIONS, ModelShape, Trace, check_shape, validate
from specmd_jax.core.trace_fields import FLOAT_FIELDS, INT_FIELDS, NDIM


def save_trace(t: Trace, path) -> None:
    """Validate ``t`` and write it to ``path`` (must end in ``.npz``) in the canonical npz format
    (version ``FORMAT_VERSION``); the file appears whole or not at all (written aside, renamed)."""
    path = os.fspath(path)
    if not str(path).lower().endswith(".npz"):
        raise TraceError(f"{path}: save_trace writes the npz format; the path must end in .npz")
    validate(t)
    meta = {"format_version": FORMAT_VERSION, "shape": dataclasses.asdict(t.shape),
            "source": t.source, "notes": list(t.notes), "has_weights": t.has_weights}
    arrays = dict(pass_request=t.pass_request, pass_phase=t.pass_phase, pass_tokens=t.pass_tokens,
                  cell_offsets=t.cell_offsets, experts=t.experts)
    if t.weights is not None:
        arrays["weights"] = t.weights
    if t.pred_scores is not None:
        arrays["pred_scores"] = t.pred_scores
    if t.logits is not None:
        arrays["logits"] = t.logits
    meta_s = json.dumps(meta)
    if len(meta_s) > MAX_META_CHARS:
        fail(path, "meta", f"{len(meta_s)} characters of JSON (source and notes) exceed {MAX_META_CHARS}: "
                            "load_npz would refuse the file")
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, meta=np.array(meta_s), **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


_NPZ_REQUIRED = ("pass_request", "pass_phase", "pass_tokens", "cell_offsets", "experts")
_NPZ_FIELDS = ("meta",) + _NPZ_REQUIRED + FLOAT_FIELDS
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError, NotImplementedError)


def _npz_members(zf: zipfile.ZipFile, path: str) -> dict:
    """Field name -> ZipInfo; refuse duplicate, unknown and missing members."""
    members = {}
    for info in zf.infolist():
        f = info.filename[:-4]
        if not info.filename.endswith(".npy") or f not in _NPZ_FIELDS:
            fail(path, f, f"unknown member {info.filename!r} (a trace holds {', '.join(_NPZ_FIELDS)})")
        if f in members:
            fail(path, f, f"member {info.filename!r} appears twice in the archive")
        members[f] = info
    if "meta" not in members:
        fail(path, "meta", "missing (not a specmd_jax trace)")
    return members


def _npz_meta(zf: zipfile.ZipFile, info, head, path: str) -> tuple[dict, ModelShape]:
    """The parsed ``meta`` object and model shape, checked."""
    shp, dt = head
    if shp != () or dt.kind != "U" or dt.itemsize // 4 > MAX_META_CHARS:
        fail(path, "meta", f"must be a JSON string of at most {MAX_META_CHARS} characters, "
                            f"got shape {shp} dtype {dt}")
    try:
        meta = loads_json(str(_npz_read(zf, info, path, "meta")[()]))
    except ValueError as e:
        raise TraceError(f"{path}: field 'meta': not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        fail(path, "meta", f"must be a JSON object, got {type(meta).__name__} {str(meta)[:80]!r}")
    ver = meta.get("format_version")
    if isinstance(ver, bool) or ver not in READABLE_VERSIONS:
        fail(path, "format_version", f"unknown version {ver!r} (this build reads {READABLE_VERSIONS})")
    for f in ("source", "notes", "has_weights"):
        v = meta.get(f)
        ok = {"source": lambda: isinstance(v, str),
              "notes": lambda: isinstance(v, list) and all(isinstance(n, str) for n in v),
              "has_weights": lambda: isinstance(v, bool)}[f]()
        if f in meta and not ok:
            fail(path, f"meta.{f}", f"wrong type: {str(v)[:80]!r}")
    if not isinstance(meta.get("shape"), dict):
        fail(path, "shape", f"must be a JSON object, got {str(meta.get('shape'))[:80]!r}")
    try:
        shape = ModelShape(**meta["shape"])
    except TypeError as e:
        raise TraceError(f"{path}: field 'shape': {e}") from e
    check_shape(path, shape)
    return meta, shape


def _npz_read(zf: zipfile.ZipFile, info, path: str, field: str) -> np.ndarray:
    try:
        with zf.open(info) as f:
            return np.lib.format.read_array(f, allow_pickle=False)
    except _ZIP_ERRORS as e:
        raise TraceError(f"{path}: field '{field}': unreadable ({e})") from e


def _npz_check_heads(path: str, s: ModelShape, heads: dict) -> None:
    """Every array's dtype kind and shape, from the headers alone, against ``meta`` and each other,
    and their total size against :func:`~specmd_jax.core.limits.max_npz_bytes`."""
    for f, (shp, dt) in heads.items():
        if f in INT_FIELDS and dt.kind not in "iu":
            fail(path, f, f"dtype {dt} is not an integer type")
        if f in FLOAT_FIELDS and dt.kind not in "fiu":
            fail(path, f, f"dtype {dt} is not a real number type (float or integer)")
        if f != "meta" and len(shp) != NDIM[f]:
            fail(path, f, f"shape {shp}: must be {NDIM[f]}-D")
    L, E, K = s.num_layers, s.num_experts, s.top_k
    P, R = heads["pass_phase"][0][0], heads["experts"][0][0]
    want = {"pass_request": ((P,), "P passes"), "pass_tokens": ((P,), "P passes"),
            "cell_offsets": ((P * L + 1,), "P*L + 1"), "experts": ((R, K), "rows x K"),
            "weights": ((R, K), "rows x K"), "pred_scores": ((P * L, E), "P*L visits x E"),
            "logits": ((R, E), "rows x E")}
    for f, (shp, why) in want.items():
        if f in heads and heads[f][0] != shp:
            fail(path, f, f"shape {heads[f][0]} != {shp} ({why}; P={P} from pass_phase, L={L}, E={E}, K={K} "
                           f"from meta, rows={R} from experts)")
    msg = grid_error(P, L, R)
    if msg:
        fail(path, "cell_offsets", msg)
    sizes = {f: int(np.prod(shp, dtype=object)) * max(dt.itemsize, np.dtype(INT_FIELDS.get(f, np.float32)).itemsize)
             for f, (shp, dt) in heads.items() if f != "meta"}
    limit = max_npz_bytes()
    if sum(sizes.values()) > limit:
        big = max(sizes, key=sizes.get)
        fail(path, big, f"the arrays would take {sum(sizes.values())} bytes in memory ({big}: shape "
                         f"{heads[big][0]}, {sizes[big]} bytes), over the limit of {limit} "
                         "(set SPECMD_MAX_NPZ_BYTES to raise it)")


def load_npz(path) -> Trace:
    """Read a canonical npz trace; validate it; errors name the file, field and value.

    Nothing sized by the file is allocated before its ``.npy`` headers are checked against
    ``meta``, against each other and against the limits of :mod:`specmd_jax.core.limits`; the small
    arrays (passes, offsets) are read and checked before the row arrays.
    """
    path = os.fspath(path)
    check_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise TraceError(f"{path}: cannot read file ({e.strerror or e})") from e
    if not head.startswith(b"PK"):
        raise TraceError(f"{path}: not an npz (zip) archive: {sniff(head) or f'starts with {head!r}'}")
    try:
        zf = zipfile.ZipFile(path)
    except _ZIP_ERRORS as e:
        raise TraceError(f"{path}: not a readable npz (zip) archive ({e})") from e
    with zf:
        members = _npz_members(zf, path)
        heads = {}
        for f, info in members.items():
            try:
                heads[f] = npy_header(zf, info)
            except _ZIP_ERRORS as e:
                raise TraceError(f"{path}: field '{f}': {e}") from e
        meta, shape = _npz_meta(zf, members["meta"], heads["meta"], path)
        for f in _NPZ_REQUIRED:
            if f not in members:
                fail(path, f, "missing")
        if "has_weights" in meta and meta["has_weights"] != ("weights" in members):
            fail(path, "weights", f"meta says has_weights={meta['has_weights']} but the member is "
                                   f"{'present' if 'weights' in members else 'missing'}")
        _npz_check_heads(path, shape, heads)
        a = {}
        for f in ("pass_request", "pass_phase", "pass_tokens", "cell_offsets"):
            a[f] = as_int(_npz_read(zf, members[f], path, f), f, INT_FIELDS[f], path, whole_floats=False)
        off, R = a["cell_offsets"], heads["experts"][0][0]
        if off[0] != 0 or np.any(np.diff(off) < 0) or off[-1] != R:
            fail(path, "cell_offsets", f"must start at 0, be non-decreasing and end at the row count {R} "
                                        f"of experts (starts {int(off[0])}, ends {int(off[-1])})")
        a["experts"] = as_int(_npz_read(zf, members["experts"], path, "experts"), "experts", np.int16, path,
                               whole_floats=False)
        for f in FLOAT_FIELDS:
            a[f] = as_float(_npz_read(zf, members[f], path, f), f, path) if f in members else None
    t = Trace(shape=shape, **a, source=str(meta.get("source", path)), notes=tuple(meta.get("notes", ())))
    return validate(t, where=path)
