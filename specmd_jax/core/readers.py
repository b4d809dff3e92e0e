"""Readers for the real routing-trace formats in ``../shared/traces/`` (see its README).

* :func:`read_route_trace_csv`: ``# route_trace v1`` CSV (BigMoeOnEdge / llama.cpp engine):
  prefill + decode, every MoE layer, top-k ids in rank order + weights.
* :func:`read_expert_jsonl`: one JSON object per (problem, layer, token) (vLLM patch,
  Mixtral speculative-moe): decode only, with rows dropped upstream.
* :func:`load_trace`: dispatch on the file suffix (``.npz`` canonical, ``.csv``, ``.jsonl``).

Readers never invent rows: a (pass, layer) cell without data stays empty and the defect is
recorded in :attr:`Trace.notes`. Every error is a :class:`TraceError` naming the file, the line,
the field (column) and the offending value. Hostile input costs little: header claims and ids
that size arrays are checked against :mod:`specmd_jax.core.limits` before anything is allocated;
text must be UTF-8 (a BOM and CRLF line endings are accepted; compressed files are refused with
"decompress it first", not read).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from specmd_jax.core.limits import (FLOAT32_MAX, INT32_MAX, MAX_IDS, check_file, grid_error, loads_json,
                     read_text_lines)
from specmd_jax.core.presets import get_model_preset
from specmd_jax.core.npz import load_npz
from specmd_jax.core.trace import DECODE, ModelShape, Trace, TraceError, make_trace

from specmd_jax.core.reader_common import MAX_NOTES, field_error, fmt_layers
from specmd_jax.core.route_csv import read_route_trace_csv

# --------------------------------------------------------------------------- expert JSONL

_JSONL_FIELDS = ("problem_id", "layer", "experts", "gating_probs", "token_idx")


def _json_int(path, line, field, x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        field_error(path, line, field, x, "not an integer")
    return x


def _jsonl_object(path, n, s) -> dict:
    """The JSON object on line ``n`` (text ``s``), holding every field of ``_JSONL_FIELDS``."""
    try:
        obj = loads_json(s)
    except ValueError as e:
        field_error(path, n, "json", s[:80], f"not valid JSON ({getattr(e, 'msg', e)})")
    if not isinstance(obj, dict):
        field_error(path, n, "json", s[:80], "not a JSON object")
    for fld in _JSONL_FIELDS:
        if fld not in obj:
            field_error(path, n, fld, None, "missing field")
    return obj


def _jsonl_keys(path, n, obj: dict) -> tuple[int, int, int, list, list]:
    """``(problem_id, layer, token_idx, experts, gating_probs)`` of a record: non-negative
    integers (the problem id an int32) and two lists."""
    pid, layer, tok = (_json_int(path, n, fld, obj[fld]) for fld in ("problem_id", "layer", "token_idx"))
    ex, pr = obj["experts"], obj["gating_probs"]
    for fld, x in (("problem_id", pid), ("layer", layer), ("token_idx", tok)):
        if x < 0:
            field_error(path, n, fld, x, "negative")
    if pid > INT32_MAX:
        field_error(path, n, "problem_id", pid, f"exceeds {INT32_MAX} (request ids are int32)")
    if not isinstance(ex, list):
        field_error(path, n, "experts", ex, "not a list")
    if not isinstance(pr, list):
        field_error(path, n, "gating_probs", pr, "not a list")
    return pid, layer, tok, ex, pr


def _jsonl_shape(path, n, ex: list, shape: Optional[ModelShape]) -> ModelShape:
    """``shape``, or (the first record, no ``model=``) the mixtral-8x7b preset when ``ex`` holds its K ids."""
    if shape is None:
        base = get_model_preset("mixtral-8x7b")
        if len(ex) != base.top_k:
            field_error(path, n, "experts", ex, f"cannot infer the model from {len(ex)} ids per token; "
                 f"pass model= (only the mixtral-8x7b default, K={base.top_k}, is inferred)")
        shape = base
    return shape


def _check_jsonl_route(path, n, ex: list, pr: list, shape: ModelShape) -> None:
    """``K`` distinct integer ids in ``[0, E)`` and as many finite float32 probs, none negative."""
    K, E = shape.top_k, shape.num_experts
    if len(ex) != K:
        field_error(path, n, "experts", ex, f"{len(ex)} ids, expected K={K}")
    for e in ex:
        _json_int(path, n, "experts", e)
        if not 0 <= e < E:
            field_error(path, n, "experts", e, f"expert id not in [0, E={E})")
    if len(set(ex)) != K:
        field_error(path, n, "experts", ex, "duplicate expert ids in one token's top-k")
    if len(pr) != len(ex):
        field_error(path, n, "gating_probs", pr, f"{len(pr)} probs for {len(ex)} experts")
    for q in pr:
        if (isinstance(q, bool) or not isinstance(q, (int, float)) or (isinstance(q, float) and not math.isfinite(q))
                or not 0 <= q <= FLOAT32_MAX):
            field_error(path, n, "gating_probs", q, "negative, NaN or not a finite float32 number")


def _check_jsonl_layer(path, n, layer: int, shape: ModelShape, model: Optional[str]) -> None:
    """The layer within the preset's ``L`` (``model=`` given) and ``(layer + 1) * E <= MAX_IDS``."""
    E = shape.num_experts
    if model is not None and layer >= shape.num_layers:
        field_error(path, n, "layer", layer, f"not in [0, L={shape.num_layers}) of preset {model!r}")
    if (layer + 1) * E > MAX_IDS:    # L = max layer + 1; before anything is sized by it
        field_error(path, n, "layer", layer, f"L*E = {(layer + 1) * E} would exceed {MAX_IDS} (int16 rank encoding limit)")


def _jsonl_records(path, lines: list[str], shape: Optional[ModelShape], model: Optional[str]):
    """The checked records ``(problem_id, layer, token_idx, experts, probs)`` of the file's lines,
    each problem's ``(max token_idx, its line)``, and the shape (inferred from the first record
    when ``shape`` is ``None``)."""
    recs, seen = [], {}
    last_tok: dict[int, tuple[int, int]] = {}      # problem -> (max token_idx, its line)
    for n, s in enumerate(lines, start=1):
        s = s.strip()
        if not s:
            continue
        obj = _jsonl_object(path, n, s)
        pid, layer, tok, ex, pr = _jsonl_keys(path, n, obj)
        shape = _jsonl_shape(path, n, ex, shape)
        _check_jsonl_route(path, n, ex, pr, shape)
        _check_jsonl_layer(path, n, layer, shape, model)
        key = (pid, layer, tok)
        if key in seen:
            field_error(path, n, "token_idx", tok, f"duplicate (problem_id={pid}, layer={layer}, token_idx={tok}); "
                 f"first at line {seen[key]}")
        seen[key] = n
        if tok >= last_tok.get(pid, (-1, 0))[0]:
            last_tok[pid] = (tok, n)
        recs.append((pid, layer, tok, ex, pr))
    return recs, last_tok, shape


def _jsonl_cells(recs: list, L: int, P: int):
    """The records as arrays: ``(problems, pix, lay, tok, T, counts, offsets, experts, weights)``
    with each record's problem index, layer and token_idx, the problems and their passes (max
    token_idx + 1), the rows and offsets of the ``P * L`` cells, and the experts int64[R, K] and
    weights float32[R, K] in (pass, layer) cell order."""
    pid = np.array([r[0] for r in recs], np.int64)
    lay = np.array([r[1] for r in recs], np.int64)
    tok = np.array([r[2] for r in recs], np.int64)
    ex = np.array([r[3] for r in recs], np.int64)
    w = np.array([r[4] for r in recs], np.float32)
    problems, pix = np.unique(pid, return_inverse=True)
    T = np.zeros(len(problems), np.int64)                  # passes per problem: max token_idx + 1
    np.maximum.at(T, pix, tok + 1)
    base = np.concatenate(([0], np.cumsum(T)))
    pass_of = base[pix] + tok
    cell = pass_of * L + lay
    order = np.argsort(cell, kind="stable")
    counts = np.bincount(cell, minlength=P * L)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return problems, pix, lay, tok, T, counts, offsets, ex[order], w[order]


def _jsonl_problem_notes(problems, pix, lay, tok, T, L: int) -> list[str]:
    """Per problem (the first :data:`MAX_NOTES`, then one summary): its decode passes, rows per
    layer, the layers that miss rows and those whose token_idx has gaps."""
    notes = []
    pl = pix * L + lay                                     # (problem, layer) of each record
    per = np.bincount(pl, minlength=len(problems) * L).reshape(-1, L)       # rows per problem and layer
    top = np.zeros(len(problems) * L, np.int64)
    np.maximum.at(top, pl, tok + 1)
    holes = ((per > 0) & (top.reshape(-1, L) != per)).sum(axis=1)          # layers whose token_idx has gaps
    for i, p in enumerate(problems[:MAX_NOTES]):
        short = np.flatnonzero(per[i] < T[i])
        s = (f"problem {p}: {T[i]} decode passes (max token_idx + 1 over layers); rows per layer min "
             f"{per[i].min()} max {per[i].max()}; {len(short)} layers miss rows "
             f"({int((T[i] - per[i]).sum())} empty cells)")
        if len(short):
            s += f": {fmt_layers(short)}"
        if holes[i]:
            s += f"; token_idx has internal gaps in {holes[i]} layers"
        notes.append(s)
    if len(problems) > MAX_NOTES:
        rest = slice(MAX_NOTES, None)
        notes.append(f"{len(problems) - MAX_NOTES} more problems ({problems[MAX_NOTES]}..{problems[-1]}): "
                     f"{int(np.sum((per[rest] < T[rest, None]).any(axis=1)))} of them miss rows "
                     f"({int((T[rest, None] - per[rest]).sum())} empty cells)")
    return notes


def read_expert_jsonl(path, model: Optional[str] = None) -> Trace:
    """Read a per-(problem, layer, token) routing JSONL (decode tokens only) into a :class:`Trace`.

    Each decode token ``(problem_id, token_idx)`` for ``token_idx`` in ``0..max`` over layers is
    one pass (``request = problem_id``, phase DECODE, 1 token). A cell with no record stays empty.

    Args:
        path: the JSONL file.
        model: a preset name (:data:`~specmd_jax.core.presets.MODEL_PRESETS`) giving L, E, K and
            expert_bytes. Default: ``"mixtral-8x7b"`` (E=8) when the records hold its K=2 ids,
            with ``L = max layer + 1``.

    Returns:
        The validated trace: ``experts`` int16[R, K], ``weights`` float32[R, K], R = records.

    Raises:
        TraceError: naming file, line, field and value (bad JSON, missing field, non-integer,
            expert id >= E, duplicate ids, wrong K, ``len(gating_probs) != len(experts)``,
            negative/NaN prob, layer out of range, duplicate (problem, layer, token_idx), no rows).
    """
    path = str(path)
    shape: Optional[ModelShape] = get_model_preset(model) if model is not None else None
    lines = read_text_lines(path)
    recs, last_tok, shape = _jsonl_records(path, lines, shape, model)
    if not recs:
        field_error(path, len(lines), "rows", 0, "no records" + (" (empty file)" if not lines else ""))

    L = shape.num_layers if model is not None else max(r[1] for r in recs) + 1
    P = sum(t + 1 for t, _ in last_tok.values())
    msg = grid_error(P, L, len(recs))     # before anything sized P x L
    if msg:
        tok, n = max(last_tok.values())
        field_error(path, n, "token_idx", tok, msg)
    problems, pix, lay, tok, T, counts, offsets, ex, w = _jsonl_cells(recs, L, P)

    notes = []
    if model is None:
        notes.append(f"shape: E={shape.num_experts}, K={shape.top_k} and expert_bytes={shape.expert_bytes} from "
                     f"preset {shape.name!r} (bytes come from the preset, not the file); L={L} = max layer + 1")
    else:
        notes.append(f"shape from preset {shape.name!r} (expert_bytes from the preset, not the file)")
    notes.append("decode tokens only: one pass per (problem_id, token_idx); no prefill recorded")
    notes += _jsonl_problem_notes(problems, pix, lay, tok, T, L)
    n_empty = int(np.sum(counts == 0))
    if n_empty:
        notes.append(
            f"{n_empty} of {P * L} cells are empty (rows missing in the file, e.g. dropped by the upstream "
            "logger); token_idx was renumbered after the drops, so a layer's missing rows show up as empty "
            "cells at the end of its sequence, the real gaps cannot be located from the file, and "
            "cross-layer (token-synchronous) alignment is only trustworthy up to each layer's first gap")
    shp = ModelShape(shape.name, L, shape.num_experts, shape.top_k, shape.expert_bytes)
    return make_trace(shp, np.repeat(problems, T), np.full(P, DECODE), np.ones(P), offsets, ex, w,
                      source=path, notes=notes)


# --------------------------------------------------------------------------- dispatch


_COMPRESSED = {".gz": "gunzip", ".bz2": "bunzip2", ".xz": "unxz", ".zst": "unzstd", ".zip": "unzip"}


def load_trace(path) -> Trace:
    """Load a trace by suffix: ``.npz`` (canonical), ``.csv`` (route_trace v1), ``.jsonl``.

    Raises:
        TraceError: missing file, a directory or other non-regular file, a compressed or unknown
            suffix (naming the path), or any reader error.
    """
    p = Path(path)
    check_file(str(p))
    suf = p.suffix.lower()
    if suf == ".npz":
        return load_npz(str(p))
    if suf == ".csv":
        return read_route_trace_csv(p)
    if suf == ".jsonl":
        return read_expert_jsonl(p)
    if suf in _COMPRESSED:
        raise TraceError(f"{path}: compressed ({p.suffix}): decompress it first ({_COMPRESSED[suf]}), "
                         "then load the .csv/.jsonl/.npz inside")
    raise TraceError(f"{path}: unknown trace format suffix {p.suffix!r} (expected .npz, .csv or .jsonl)")
