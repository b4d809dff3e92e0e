"""Readers for the real routing-trace formats in ``../shared/traces/`` (see its README).

* :func:`read_route_trace_csv`: ``# route_trace v1`` CSV (BigMoeOnEdge / llama.cpp engine):
  prefill + decode, every MoE layer, top-k ids in rank order + weights.
* :func:`read_expert_jsonl`: one JSON object per (problem, layer, token) (vLLM patch,
  Mixtral speculative-moe): decode only, with rows dropped upstream.
* :func:`load_trace`: dispatch on the file suffix (``.npz`` canonical, ``.csv``, ``.jsonl``).

Readers never invent rows: a (pass, layer) cell without data stays empty and the defect is
recorded in :attr:`Trace.notes`. Every error is a :class:`TraceError` naming the file, the line,
the field (column) and the offending value.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .presets import get_model_preset
from .trace import DECODE, PREFILL, ModelShape, Trace, TraceError, load_npz, make_trace

ROUTE_TRACE_VERSION_LINE = "# route_trace v1"
_CSV_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight")


def _err(path, line, field: str, value, msg: str):
    """Raise a :class:`TraceError` naming file, line, field and value."""
    raise TraceError(f"{path}:{line}: field '{field}': value {value!r}: {msg}")


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
        (L, E, K, layer_bytes dict, model name, header line index, column index map).
    """
    first = lines[0].strip() if lines else ""
    if first != ROUTE_TRACE_VERSION_LINE:
        msg = ("unknown route_trace version (this reader reads v1)" if first.startswith("# route_trace")
               else f"missing version line (expected {ROUTE_TRACE_VERSION_LINE!r})")
        _err(path, 1, "version", first, msg)
    hdr: dict[str, tuple[int, str]] = {}
    layer_bytes: dict[int, int] = {}
    i = 1
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        kv = dict(tok.split("=", 1) for tok in lines[i][1:].split() if "=" in tok)
        if "layer" in kv:
            if "expert_bytes" not in kv:
                _err(path, i + 1, "expert_bytes", lines[i].strip(), "missing in layer line")
            layer_bytes[_int(path, i + 1, "layer", kv["layer"])] = _int(path, i + 1, "expert_bytes",
                                                                        kv["expert_bytes"])
        else:
            for k, v in kv.items():
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
    if not layer_bytes:
        _err(path, where, "expert_bytes", None, "missing header field (no '# layer=<i> expert_bytes=' line)")
    if i >= len(lines):
        _err(path, i, "header", None, "missing column header line")
    cols = [c.strip() for c in lines[i].split(",")]
    for c in _CSV_COLUMNS:
        if c not in cols:
            _err(path, i + 1, c, lines[i].strip(), "missing column in header")
    name = "route_trace"
    if "model" in hdr:
        name = os.path.splitext(os.path.basename(hdr["model"][1]))[0] or name
    elif "arch" in hdr:
        name = hdr["arch"][1]
    return (*dims, layer_bytes, name, i, {c: cols.index(c) for c in _CSV_COLUMNS}, len(cols))


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
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise TraceError(f"{path}: cannot read file ({e})") from e
    L, E, K, layer_bytes, name, h, ci, ncols = _read_preamble(path, lines)

    data = [(n + 1, ln) for n, ln in enumerate(lines[h + 1:], start=h + 1) if ln.strip()]
    if not data:
        _err(path, len(lines), "rows", 0, "no data rows")
    lineno = np.fromiter((n for n, _ in data), np.int64, len(data))
    rows = [ln.split(",") for _, ln in data]
    for (n, ln), r in zip(data, rows):
        if len(r) != ncols:
            _err(path, n, "columns", ln, f"{len(r)} fields, header has {ncols}")
    cols = list(zip(*rows))

    def int_col(c: str) -> np.ndarray:
        s = cols[ci[c]]
        try:
            return np.array([int(x) for x in s], np.int64)
        except ValueError:
            for n, x in zip(lineno, s):
                _int(path, int(n), c, x)
            raise

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
    limits = {"turn": (0, None), "phase": (0, 2), "step": (0, None), "layer": (0, L),
              "slot": (0, K), "expert": (0, E)}
    for c, (lo, hi) in limits.items():
        bad = (v[c] < lo) | ((v[c] >= hi) if hi is not None else False)
        if bad.any():
            j = int(np.argmax(bad))
            rng = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
            _err(path, int(lineno[j]), c, int(v[c][j]), f"out of range {rng}"
                 + {"layer": f" (n_layer={L})", "slot": f" (n_expert_used={K})",
                    "expert": f" (n_expert={E})"}.get(c, ""))
    bad = ~np.isfinite(weight) | (weight < 0)
    if bad.any():
        j = int(np.argmax(bad))
        _err(path, int(lineno[j]), "weight", cols[ci["weight"]][j], "negative or not finite")

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
                               pass_last_step, pid, t_layer, t_step, L)
    shape = ModelShape(name=name, num_layers=L, num_experts=E, top_k=K, expert_bytes=int(expert_bytes))
    return make_trace(shape, pass_request, pass_phase, pass_tokens, offsets, ex, w, source=path, notes=notes)


def _cell_count_notes(rows, pass_phase, pass_request, pass_tokens, pass_last_step, pid, t_layer,
                      t_step, L) -> list[str]:
    """Aggregate notes for (pass, layer) cells whose row count differs from the pass's tokens."""
    notes = []
    bad = rows != pass_tokens[:, None]
    for p in np.flatnonzero(bad.any(axis=1) & (pass_phase == PREFILL)):
        parts = []
        for r in np.unique(rows[p][bad[p]]):
            ls = np.flatnonzero(bad[p] & (rows[p] == r))
            verb = "routes" if len(ls) == 1 else "route"
            s = f"{_fmt_layers(ls)} {verb} {r} of {pass_tokens[p]} prompt tokens"
            if r == 1 and len(ls) == 1 and ls[0] == L - 1:
                st = t_step[(pid == p) & (t_layer == ls[0])]
                if st.size and st[0] == pass_last_step[p]:
                    s += (" (only the last prompt token: consistent with llama.cpp gathering only the "
                          "output token's rows before the last layer)")
            parts.append(s)
        notes.append(f"prefill pass {p} (request {pass_request[p]}): " + "; ".join(parts))
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
        model: a preset name (:data:`~specmd_jax.presets.MODEL_PRESETS`) giving L, E, K and
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
    recs, seen = [], {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TraceError(f"{path}: cannot read file ({e})") from e
    with f:
        for n, s in enumerate(f, start=1):
            s = s.strip()
            if not s:
                continue
            try:
                obj = json.loads(s)
            except json.JSONDecodeError as e:
                _err(path, n, "json", s[:80], f"not valid JSON ({e.msg})")
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
                if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or math.isinf(q) or q < 0:
                    _err(path, n, "gating_probs", q, "negative, NaN or not a finite number")
            if model is not None and layer >= shape.num_layers:
                _err(path, n, "layer", layer, f"not in [0, L={shape.num_layers}) of preset {model!r}")
            key = (pid, layer, tok)
            if key in seen:
                _err(path, n, "token_idx", tok, f"duplicate (problem_id={pid}, layer={layer}, token_idx={tok}); "
                     f"first at line {seen[key]}")
            seen[key] = n
            recs.append((pid, layer, tok, ex, pr))
    if not recs:
        _err(path, 0, "rows", 0, "no records")

    pid = np.array([r[0] for r in recs], np.int64)
    lay = np.array([r[1] for r in recs], np.int64)
    tok = np.array([r[2] for r in recs], np.int64)
    ex = np.array([r[3] for r in recs], np.int64)
    w = np.array([r[4] for r in recs], np.float32)
    L = shape.num_layers if model is not None else int(lay.max()) + 1
    problems = np.unique(pid)
    T = np.array([tok[pid == p].max() + 1 for p in problems], np.int64)   # passes per problem
    base = np.concatenate(([0], np.cumsum(T)))
    P = int(base[-1])
    pass_of = base[np.searchsorted(problems, pid)] + tok
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
    for i, p in enumerate(problems):
        m = pid == p
        per_layer = np.bincount(lay[m], minlength=L)
        short = np.flatnonzero(per_layer < T[i])
        holes = sum(1 for l in range(L) if per_layer[l] and tok[m & (lay == l)].max() + 1 != per_layer[l])
        s = (f"problem {p}: {T[i]} decode passes (max token_idx + 1 over layers); rows per layer min "
             f"{per_layer.min()} max {per_layer.max()}; {len(short)} layers miss rows "
             f"({int((T[i] - per_layer).sum())} empty cells)")
        if len(short):
            s += f": {_fmt_layers(short)}"
        if holes:
            s += f"; token_idx has internal gaps in {holes} layers"
        notes.append(s)
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


def load_trace(path) -> Trace:
    """Load a trace by suffix: ``.npz`` (canonical), ``.csv`` (route_trace v1), ``.jsonl``.

    Raises:
        TraceError: missing file or unknown suffix (naming the path), or any reader error.
    """
    p = Path(path)
    if not p.is_file():
        raise TraceError(f"{path}: no such file")
    suf = p.suffix.lower()
    if suf == ".npz":
        return load_npz(str(p))
    if suf == ".csv":
        return read_route_trace_csv(p)
    if suf == ".jsonl":
        return read_expert_jsonl(p)
    raise TraceError(f"{path}: unknown trace format suffix {p.suffix!r} (expected .npz, .csv or .jsonl)")
