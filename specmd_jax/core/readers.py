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
import os
from collections import Counter
from pathlib import Path
from typing import Optional

import numpy as np

from specmd_jax.core.limits import (FLOAT32_MAX, INT32_MAX, MAX_EXPERT_BYTES, MAX_IDS, check_file, grid_error, loads_json,
                     read_text_lines)
from specmd_jax.core.presets import get_model_preset
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, Trace, TraceError, load_npz, make_trace

ROUTE_TRACE_VERSION_LINE = "# route_trace v1"
_CSV_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight")
MAX_NOTES = 32   # per-problem / per-pass notes kept verbatim; the rest are summed up in one note


def _err(path, line, field: str, value, msg: str):
    """Raise a :class:`TraceError` naming file, line, field and value (its repr cut at 200 chars)."""
    v = repr(value)
    if len(v) > 200:
        v = f"{v[:200]}... ({len(v)} chars)"
    raise TraceError(f"{path}:{line}: field '{field}': value {v}: {msg}")


def _int(path, line, field: str, s: str) -> int:
    try:
        return int(s)
    except (TypeError, ValueError):
        _err(path, line, field, s, "not an integer")


def _fmt_layers(ls) -> str:
    ls = [int(x) for x in ls]
    s = ", ".join(map(str, ls[:12])) + (f", ... ({len(ls)} in all)" if len(ls) > 12 else "")
    return ("layer " if len(ls) == 1 else "layers ") + s


# --------------------------------------------------------------------------- route_trace CSV


def _read_preamble(path: str, lines: list[str]):
    """Parse version line, ``#`` preamble and the column header.

    Returns:
        (L, E, K, layer_bytes dict, model name, header line index, column index map, number of
        columns, line of ``n_layer``).
    """
    if not lines:
        _err(path, 1, "version", "", "empty file")
    first = lines[0].strip()
    if first != ROUTE_TRACE_VERSION_LINE:
        msg = ("unknown route_trace version (this reader reads v1)" if first.startswith("# route_trace")
               else f"missing version line (expected {ROUTE_TRACE_VERSION_LINE!r})")
        _err(path, 1, "version", first, msg)
    hdr: dict[str, tuple[int, str]] = {}
    layer_bytes: dict[int, tuple[int, int]] = {}    # layer -> (line, bytes)
    i = 1
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        kv: dict[str, str] = {}
        for tok in lines[i][1:].split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                if k in kv:
                    _err(path, i + 1, k, v, f"key given twice on this line (first {kv[k]!r})")
                kv[k] = v
        if "layer" in kv:
            if "expert_bytes" not in kv:
                _err(path, i + 1, "expert_bytes", lines[i].strip(), "missing in layer line")
            layer = _int(path, i + 1, "layer", kv["layer"])
            if layer in layer_bytes:
                _err(path, i + 1, "layer", layer, f"second '# layer=' line for it (first at line {layer_bytes[layer][0]})")
            layer_bytes[layer] = (i + 1, _int(path, i + 1, "expert_bytes", kv["expert_bytes"]))
        else:
            for k, v in kv.items():
                if k in hdr:
                    _err(path, i + 1, k, v, f"header key given twice (first at line {hdr[k][0]}: {hdr[k][1]!r})")
                hdr[k] = (i + 1, v)
        i += 1
    where = min((ln for ln, _ in hdr.values()), default=2)
    dims = []
    for f in ("n_layer", "n_expert", "n_expert_used"):
        if f not in hdr:
            _err(path, where, f, None, "missing header field")
        ln, v = hdr[f]
        n = _int(path, ln, f, v)
        if n <= 0:
            _err(path, ln, f, v, "must be positive")
        dims.append(n)
    L, E, K = dims
    if L * E > MAX_IDS:   # before anything is sized by L or E
        _err(path, hdr["n_layer"][0], "n_layer", L, f"n_layer * n_expert = {L * E} exceeds {MAX_IDS} "
             "(int16 rank encoding limit)")
    if K > E:
        _err(path, hdr["n_expert_used"][0], "n_expert_used", K, f"exceeds n_expert={E}")
    if not layer_bytes:
        _err(path, where, "expert_bytes", None, "missing header field (no '# layer=<i> expert_bytes=' line)")
    for layer, (ln, b) in layer_bytes.items():
        if not 0 <= layer < L:
            _err(path, ln, "layer", layer, f"'# layer=' line out of range [0, {L}) (n_layer={L})")
        if not 0 < b <= MAX_EXPERT_BYTES:
            _err(path, ln, "expert_bytes", b, f"not in [1, {MAX_EXPERT_BYTES}]")
    if i >= len(lines):
        _err(path, i, "header", None, "missing column header line")
    cols = [c.strip() for c in lines[i].split(",")]
    for c in _CSV_COLUMNS:
        if c not in cols:
            _err(path, i + 1, c, lines[i].strip(), "missing column in header")
    dup = sorted(c for c, n in Counter(cols).items() if n > 1)     # not cols.count: a 1 MiB header is 500k columns
    if dup:
        _err(path, i + 1, dup[0], lines[i].strip(), "column named twice in header")
    name = "route_trace"
    if "model" in hdr:
        name = os.path.splitext(os.path.basename(hdr["model"][1]))[0] or name
    elif "arch" in hdr:
        name = hdr["arch"][1]
    return (L, E, K, {k: b for k, (_, b) in layer_bytes.items()}, name, i, {c: cols.index(c) for c in _CSV_COLUMNS},
            len(cols), hdr["n_layer"][0])


def read_route_trace_csv(path) -> Trace:
    """Read a ``# route_trace v1`` CSV (one row per routed expert) into a :class:`Trace`.

    Passes: the prefill (phase 0) of a turn is one pass whose cells hold one row per prompt
    token (``step``) present for that layer, in step order; every decode step (phase 1) is one
    pass. ``request = turn``; ``pass_tokens`` = distinct steps of the pass. Within a token row
    the K ids are placed by ``slot`` (router rank order). ``residency`` and ``expert_bytes``
    columns (the engine's own cache state) are ignored.

    Args:
        path: the CSV file.

    Returns:
        The validated trace: ``experts`` int16[R, K], ``weights`` float32[R, K] with
        R = routed tokens summed over cells (= data rows / K).

    Raises:
        TraceError: naming file, line, field and value (version, header, non-integer value,
            out-of-range id/slot/layer/phase, missing or duplicate slot, duplicate expert in a
            token's top-k, negative/NaN weight, no rows).
    """
    path = str(path)
    lines = read_text_lines(path)
    L, E, K, layer_bytes, name, h, ci, ncols, L_line = _read_preamble(path, lines)

    data = [(n + 1, ln) for n, ln in enumerate(lines[h + 1:], start=h + 1) if ln.strip()]
    if not data:
        _err(path, len(lines), "rows", 0, "no data rows")
    lineno = np.fromiter((n for n, _ in data), np.int64, len(data))
    rows = [ln.split(",") for _, ln in data]
    for (n, ln), r in zip(data, rows):
        if len(r) != ncols:
            _err(path, n, "columns", ln, f"{len(r)} fields, header has {ncols}")
    cols = list(zip(*rows))

    limits = {"turn": (0, INT32_MAX + 1, " (request id, int32)"), "phase": (0, 2, ""),
              "step": (0, 2 ** 63, " (int64)"), "layer": (0, L, f" (n_layer={L})"),
              "slot": (0, K, f" (n_expert_used={K})"), "expert": (0, E, f" (n_expert={E})")}

    def int_col(c: str) -> np.ndarray:
        """Column ``c`` as int64, every value checked against its range before the array is made."""
        s = cols[ci[c]]
        try:
            vals = [int(x) for x in s]
        except ValueError:
            for n, x in zip(lineno, s):
                _int(path, int(n), c, x)
            raise
        lo, hi, why = limits[c]
        if min(vals) < lo or max(vals) >= hi:
            j = next(j for j, x in enumerate(vals) if not lo <= x < hi)
            _err(path, int(lineno[j]), c, vals[j], f"out of range [{lo}, {hi}){why}")
        return np.array(vals, np.int64)

    v = {c: int_col(c) for c in _CSV_COLUMNS if c != "weight"}
    try:
        weight = np.array([float(x) for x in cols[ci["weight"]]], np.float64)
    except ValueError:
        for n, x in zip(lineno, cols[ci["weight"]]):
            try:
                float(x)
            except ValueError:
                _err(path, int(n), "weight", x, "not a number")
        raise
    bad = ~np.isfinite(weight) | (weight < 0) | (weight > FLOAT32_MAX)
    if bad.any():
        j = int(np.argmax(bad))
        _err(path, int(lineno[j]), "weight", cols[ci["weight"]][j], "negative, not finite or beyond float32")

    turn, phase, step, layer, slot = (v[c] for c in ("turn", "phase", "step", "layer", "slot"))
    pstep = np.where(phase == PREFILL, -1, step)  # all prefill steps of a turn share one pass
    order = np.lexsort((slot, step, layer, pstep, phase, turn))
    turn, phase, step, layer, slot, pstep = (a[order] for a in (turn, phase, step, layer, slot, pstep))
    expert, weight, lineno = v["expert"][order], weight[order], lineno[order]

    # Slot check: each token cell (turn, phase, step, layer) must hold slots 0..K-1 exactly once.
    n = len(order)
    new = np.ones(n, bool)
    new[1:] = (np.diff(turn) != 0) | (np.diff(phase) != 0) | (np.diff(step) != 0) | (np.diff(layer) != 0)
    dup = ~new[1:] & (slot[1:] == slot[:-1])
    if dup.any():
        j = int(np.argmax(dup)) + 1
        _err(path, int(lineno[j]), "slot", int(slot[j]),
             f"duplicate slot in cell (turn={turn[j]}, phase={phase[j]}, step={step[j]}, layer={layer[j]}); "
             f"first at line {lineno[j - 1]}")
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    if np.any(sizes != K):
        j = int(starts[np.argmax(sizes != K)])
        have = slot[j:j + sizes[np.argmax(sizes != K)]].tolist()
        miss = [s for s in range(K) if s not in have]
        _err(path, int(lineno[j]), "slot", have,
             f"cell (turn={turn[j]}, phase={phase[j]}, step={step[j]}, layer={layer[j]}) misses slot(s) {miss} "
             f"of n_expert_used={K}")

    ex = expert.reshape(-1, K)
    w = weight.reshape(-1, K).astype(np.float32)
    t_turn, t_phase, t_step, t_layer, t_pstep = (a[::K] for a in (turn, phase, step, layer, pstep))
    srt = np.sort(ex, axis=1)
    d = np.any(srt[:, 1:] == srt[:, :-1], axis=1) if K > 1 else np.zeros(len(ex), bool)
    if d.any():
        r = int(np.argmax(d))
        k = next(k for k in range(1, K) if ex[r, k] in ex[r, :k])
        _err(path, int(lineno[r * K + k]), "expert", int(ex[r, k]),
             f"duplicate expert id in one token's top-k {ex[r].tolist()}")

    # Passes: key (turn, phase, pstep) changes; rows are already in (pass, layer, step) order.
    T = len(ex)
    pnew = np.ones(T, bool)
    pnew[1:] = (np.diff(t_turn) != 0) | (np.diff(t_phase) != 0) | (np.diff(t_pstep) != 0)
    pid = np.cumsum(pnew) - 1
    P = int(pid[-1]) + 1
    msg = grid_error(P, L, T)   # before anything sized P x L
    if msg:
        _err(path, L_line, "n_layer", L, msg)
    pass_request, pass_phase = t_turn[pnew], t_phase[pnew]
    o = np.lexsort((t_step, pid))
    snew = np.ones(T, bool)
    snew[1:] = (np.diff(pid[o]) != 0) | (np.diff(t_step[o]) != 0)
    pass_tokens = np.bincount(pid[o][snew], minlength=P)
    pass_last_step = np.full(P, -1, np.int64)
    np.maximum.at(pass_last_step, pid, t_step)
    counts = np.bincount(pid * L + t_layer, minlength=P * L)
    offsets = np.concatenate(([0], np.cumsum(counts)))

    notes = [f"top_k K={K} is the recorded n_expert_used (the run may override the model's native top-k)",
             "residency and expert_bytes columns ignored (the recording engine's own cache state)"]
    bvals = sorted(set(layer_bytes.values()))
    expert_bytes = max(bvals)
    if len(bvals) > 1:
        notes.append(f"expert_bytes differs across layers ({len(bvals)} values, {min(bvals)}..{max(bvals)} bytes); "
                     f"using the max {expert_bytes} for every layer")
    if len(layer_bytes) != L:
        miss = sorted(set(range(L)) - set(layer_bytes))
        notes.append(f"no '# layer=' bytes line for {_fmt_layers(miss)}")
    notes += _cell_count_notes(counts.reshape(P, L), pass_phase, pass_request, pass_tokens,
                               pass_last_step, offsets, t_step, L)
    shape = ModelShape(name=name, num_layers=L, num_experts=E, top_k=K, expert_bytes=int(expert_bytes))
    return make_trace(shape, pass_request, pass_phase, pass_tokens, offsets, ex, w, source=path, notes=notes)


def _cell_count_notes(rows, pass_phase, pass_request, pass_tokens, pass_last_step, offsets, t_step,
                      L) -> list[str]:
    """Aggregate notes for (pass, layer) cells whose row count differs from the pass's tokens
    (``t_step`` in cell order, ``offsets`` the cell offsets; one note per prefill pass for the
    first :data:`MAX_NOTES` of them, one summary for the rest)."""
    notes = []
    bad = rows != pass_tokens[:, None]
    pre_bad = np.flatnonzero(bad.any(axis=1) & (pass_phase == PREFILL))
    for p in pre_bad[:MAX_NOTES]:
        parts = []
        for r in np.unique(rows[p][bad[p]]):
            ls = np.flatnonzero(bad[p] & (rows[p] == r))
            verb = "routes" if len(ls) == 1 else "route"
            s = f"{_fmt_layers(ls)} {verb} {r} of {pass_tokens[p]} prompt tokens"
            if r == 1 and len(ls) == 1 and ls[0] == L - 1:
                c = p * L + ls[0]
                if t_step[offsets[c]] == pass_last_step[p]:
                    s += (" (only the last prompt token: consistent with llama.cpp gathering only the "
                          "output token's rows before the last layer)")
            parts.append(s)
        notes.append(f"prefill pass {p} (request {pass_request[p]}): " + "; ".join(parts))
    if len(pre_bad) > MAX_NOTES:
        rest = pre_bad[MAX_NOTES:]
        notes.append(f"{len(rest)} more prefill passes (passes {rest[0]}..{rest[-1]}) have layers routing fewer "
                     f"rows than their prompt tokens ({int(bad[rest].sum())} such cells)")
    dec = bad & (pass_phase == DECODE)[:, None]
    if dec.any():
        ps, ls = np.nonzero(dec)
        notes.append(f"{len(ps)} decode cells (pass, layer) hold no row, in {len(np.unique(ps))} decode passes; "
                     f"first: pass {ps[0]} layer {ls[0]}; {_fmt_layers(np.unique(ls))} affected")
    return notes


# --------------------------------------------------------------------------- expert JSONL

_JSONL_FIELDS = ("problem_id", "layer", "experts", "gating_probs", "token_idx")


def _json_int(path, line, field, x) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        _err(path, line, field, x, "not an integer")
    return x


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
    recs, seen = [], {}
    last_tok: dict[int, tuple[int, int]] = {}      # problem -> (max token_idx, its line)
    for n, s in enumerate(lines, start=1):
        s = s.strip()
        if not s:
            continue
        try:
            obj = loads_json(s)
        except ValueError as e:
            _err(path, n, "json", s[:80], f"not valid JSON ({getattr(e, 'msg', e)})")
        if not isinstance(obj, dict):
            _err(path, n, "json", s[:80], "not a JSON object")
        for fld in _JSONL_FIELDS:
            if fld not in obj:
                _err(path, n, fld, None, "missing field")
        pid, layer, tok = (_json_int(path, n, fld, obj[fld]) for fld in ("problem_id", "layer", "token_idx"))
        ex, pr = obj["experts"], obj["gating_probs"]
        for fld, x in (("problem_id", pid), ("layer", layer), ("token_idx", tok)):
            if x < 0:
                _err(path, n, fld, x, "negative")
        if pid > INT32_MAX:
            _err(path, n, "problem_id", pid, f"exceeds {INT32_MAX} (request ids are int32)")
        if not isinstance(ex, list):
            _err(path, n, "experts", ex, "not a list")
        if not isinstance(pr, list):
            _err(path, n, "gating_probs", pr, "not a list")
        if shape is None:
            base = get_model_preset("mixtral-8x7b")
            if len(ex) != base.top_k:
                _err(path, n, "experts", ex, f"cannot infer the model from {len(ex)} ids per token; "
                     f"pass model= (only the mixtral-8x7b default, K={base.top_k}, is inferred)")
            shape = base
        K, E = shape.top_k, shape.num_experts
        if len(ex) != K:
            _err(path, n, "experts", ex, f"{len(ex)} ids, expected K={K}")
        for e in ex:
            _json_int(path, n, "experts", e)
            if not 0 <= e < E:
                _err(path, n, "experts", e, f"expert id not in [0, E={E})")
        if len(set(ex)) != K:
            _err(path, n, "experts", ex, "duplicate expert ids in one token's top-k")
        if len(pr) != len(ex):
            _err(path, n, "gating_probs", pr, f"{len(pr)} probs for {len(ex)} experts")
        for q in pr:
            if (isinstance(q, bool) or not isinstance(q, (int, float)) or (isinstance(q, float) and not math.isfinite(q))
                    or not 0 <= q <= FLOAT32_MAX):
                _err(path, n, "gating_probs", q, "negative, NaN or not a finite float32 number")
        if model is not None and layer >= shape.num_layers:
            _err(path, n, "layer", layer, f"not in [0, L={shape.num_layers}) of preset {model!r}")
        if (layer + 1) * E > MAX_IDS:    # L = max layer + 1; before anything is sized by it
            _err(path, n, "layer", layer, f"L*E = {(layer + 1) * E} would exceed {MAX_IDS} (int16 rank encoding limit)")
        key = (pid, layer, tok)
        if key in seen:
            _err(path, n, "token_idx", tok, f"duplicate (problem_id={pid}, layer={layer}, token_idx={tok}); "
                 f"first at line {seen[key]}")
        seen[key] = n
        if tok >= last_tok.get(pid, (-1, 0))[0]:
            last_tok[pid] = (tok, n)
        recs.append((pid, layer, tok, ex, pr))
    if not recs:
        _err(path, len(lines), "rows", 0, "no records" + (" (empty file)" if not lines else ""))

    L = shape.num_layers if model is not None else max(r[1] for r in recs) + 1
    P = sum(t + 1 for t, _ in last_tok.values())
    msg = grid_error(P, L, len(recs))     # before anything sized P x L
    if msg:
        tok, n = max(last_tok.values())
        _err(path, n, "token_idx", tok, msg)
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

    notes = []
    if model is None:
        notes.append(f"shape: E={shape.num_experts}, K={shape.top_k} and expert_bytes={shape.expert_bytes} from "
                     f"preset {shape.name!r} (bytes come from the preset, not the file); L={L} = max layer + 1")
    else:
        notes.append(f"shape from preset {shape.name!r} (expert_bytes from the preset, not the file)")
    notes.append("decode tokens only: one pass per (problem_id, token_idx); no prefill recorded")
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
            s += f": {_fmt_layers(short)}"
        if holes[i]:
            s += f"; token_idx has internal gaps in {holes[i]} layers"
        notes.append(s)
    if len(problems) > MAX_NOTES:
        rest = slice(MAX_NOTES, None)
        notes.append(f"{len(problems) - MAX_NOTES} more problems ({problems[MAX_NOTES]}..{problems[-1]}): "
                     f"{int(np.sum((per[rest] < T[rest, None]).any(axis=1)))} of them miss rows "
                     f"({int((T[rest, None] - per[rest]).sum())} empty cells)")
    n_empty = int(np.sum(counts == 0))
    if n_empty:
        notes.append(
            f"{n_empty} of {P * L} cells are empty (rows missing in the file, e.g. dropped by the upstream "
            "logger); token_idx was renumbered after the drops, so a layer's missing rows show up as empty "
            "cells at the end of its sequence, the real gaps cannot be located from the file, and "
            "cross-layer (token-synchronous) alignment is only trustworthy up to each layer's first gap")
    shp = ModelShape(shape.name, L, shape.num_experts, shape.top_k, shape.expert_bytes)
    return make_trace(shp, np.repeat(problems, T), np.full(P, DECODE), np.ones(P), offsets, ex[order], w[order],
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
