"""Reader of the ``# route_trace v1`` CSV (BigMoeOnEdge / llama.cpp engine): prefill + decode,
every MoE layer, top-k ids in rank order + weights (every error a
:class:`~specmd_jax.core.trace.TraceError` naming the file, the line, the field and the value; the
version line, preamble and column header: :mod:`specmd_jax.core.route_csv_header`)."""

from __future__ import annotations

import numpy as np

from specmd_jax.core.limits import FLOAT32_MAX, INT32_MAX, grid_error, read_text_lines
from specmd_jax.core.reader_common import MAX_NOTES, field_error, fmt_layers, parse_int
from specmd_jax.core.route_csv_header import CSV_COLUMNS, read_preamble
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, Trace, make_trace


def _data_rows(path: str, lines: list[str], h: int, ncols: int):
    """The non-blank lines after the column header (line index ``h``): their line numbers
    int64[n] and their fields, one tuple per column; every line has the header's ``ncols`` fields."""
    data = [(n + 1, ln) for n, ln in enumerate(lines[h + 1:], start=h + 1) if ln.strip()]
    if not data:
        field_error(path, len(lines), "rows", 0, "no data rows")
    lineno = np.fromiter((n for n, _ in data), np.int64, len(data))
    rows = [ln.split(",") for _, ln in data]
    for (n, ln), r in zip(data, rows):
        if len(r) != ncols:
            field_error(path, n, "columns", ln, f"{len(r)} fields, header has {ncols}")
    return lineno, list(zip(*rows))


def _int_column(path: str, c: str, s, lineno: np.ndarray, lo: int, hi: int, why: str) -> np.ndarray:
    """Column ``c`` as int64, every value checked against its range before the array is made."""
    try:
        vals = [int(x) for x in s]
    except ValueError:
        for n, x in zip(lineno, s):
            parse_int(path, int(n), c, x)
        raise
    if min(vals) < lo or max(vals) >= hi:
        j = next(j for j, x in enumerate(vals) if not lo <= x < hi)
        field_error(path, int(lineno[j]), c, vals[j], f"out of range [{lo}, {hi}){why}")
    return np.array(vals, np.int64)


def _weight_column(path: str, s, lineno: np.ndarray) -> np.ndarray:
    """The weight column as float64: numbers, finite, non-negative and within float32."""
    try:
        weight = np.array([float(x) for x in s], np.float64)
    except ValueError:
        for n, x in zip(lineno, s):
            try:
                float(x)
            except ValueError:
                field_error(path, int(n), "weight", x, "not a number")
        raise
    bad = ~np.isfinite(weight) | (weight < 0) | (weight > FLOAT32_MAX)
    if bad.any():
        j = int(np.argmax(bad))
        field_error(path, int(lineno[j]), "weight", s[j], "negative, not finite or beyond float32")
    return weight


def _columns(path: str, cols: list, ci: dict, lineno: np.ndarray, L: int, E: int, K: int):
    """The integer columns (name -> int64 array, each value in its range) and the weights."""
    limits = {"turn": (0, INT32_MAX + 1, " (request id, int32)"), "phase": (0, 2, ""),
              "step": (0, 2 ** 63, " (int64)"), "layer": (0, L, f" (n_layer={L})"),
              "slot": (0, K, f" (n_expert_used={K})"), "expert": (0, E, f" (n_expert={E})")}
    v = {c: _int_column(path, c, cols[ci[c]], lineno, *limits[c]) for c in CSV_COLUMNS if c != "weight"}
    return v, _weight_column(path, cols[ci["weight"]], lineno)


def _check_slots(path: str, K: int, turn, phase, step, layer, slot, lineno) -> None:
    """Each token cell (turn, phase, step, layer) must hold slots 0..K-1 exactly once (rows sorted
    by cell, then slot)."""
    n = len(slot)
    new = np.ones(n, bool)
    new[1:] = (np.diff(turn) != 0) | (np.diff(phase) != 0) | (np.diff(step) != 0) | (np.diff(layer) != 0)
    dup = ~new[1:] & (slot[1:] == slot[:-1])
    if dup.any():
        j = int(np.argmax(dup)) + 1
        field_error(path, int(lineno[j]), "slot", int(slot[j]),
             f"duplicate slot in cell (turn={turn[j]}, phase={phase[j]}, step={step[j]}, layer={layer[j]}); "
             f"first at line {lineno[j - 1]}")
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, n))
    if np.any(sizes != K):
        j = int(starts[np.argmax(sizes != K)])
        have = slot[j:j + sizes[np.argmax(sizes != K)]].tolist()
        miss = [s for s in range(K) if s not in have]
        field_error(path, int(lineno[j]), "slot", have,
             f"cell (turn={turn[j]}, phase={phase[j]}, step={step[j]}, layer={layer[j]}) misses slot(s) {miss} "
             f"of n_expert_used={K}")


def _check_top_k(path: str, ex: np.ndarray, lineno: np.ndarray) -> None:
    """No expert id twice in one token's top-k (``ex`` int64[T, K], ``lineno`` per slot row)."""
    K = ex.shape[1]
    srt = np.sort(ex, axis=1)
    d = np.any(srt[:, 1:] == srt[:, :-1], axis=1) if K > 1 else np.zeros(len(ex), bool)
    if d.any():
        r = int(np.argmax(d))
        k = next(k for k in range(1, K) if ex[r, k] in ex[r, :k])
        field_error(path, int(lineno[r * K + k]), "expert", int(ex[r, k]),
             f"duplicate expert id in one token's top-k {ex[r].tolist()}")


def _passes(path: str, L: int, L_line: int, t_turn, t_phase, t_step, t_layer, t_pstep):
    """Passes of the token rows (in (pass, layer, step) order): a pass starts where the key (turn,
    phase, pstep) changes. Returns ``(pass_request, pass_phase, pass_tokens, pass_last_step, rows
    int64[P, L] per cell, cell offsets)``."""
    T = len(t_turn)
    pnew = np.ones(T, bool)
    pnew[1:] = (np.diff(t_turn) != 0) | (np.diff(t_phase) != 0) | (np.diff(t_pstep) != 0)
    pid = np.cumsum(pnew) - 1
    P = int(pid[-1]) + 1
    msg = grid_error(P, L, T)   # before anything sized P x L
    if msg:
        field_error(path, L_line, "n_layer", L, msg)
    pass_request, pass_phase = t_turn[pnew], t_phase[pnew]
    o = np.lexsort((t_step, pid))
    snew = np.ones(T, bool)
    snew[1:] = (np.diff(pid[o]) != 0) | (np.diff(t_step[o]) != 0)
    pass_tokens = np.bincount(pid[o][snew], minlength=P)
    pass_last_step = np.full(P, -1, np.int64)
    np.maximum.at(pass_last_step, pid, t_step)
    counts = np.bincount(pid * L + t_layer, minlength=P * L)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    return pass_request, pass_phase, pass_tokens, pass_last_step, counts.reshape(P, L), offsets


def _shape_notes(K: int, L: int, layer_bytes: dict) -> tuple[list[str], int, tuple | None]:
    """Notes on the recorded K and the per-layer expert bytes; the max and the per-layer tuple
    (``None`` when all layers are equal; a layer without a bytes line takes the max)."""
    notes = [f"top_k K={K} is the recorded n_expert_used (the run may override the model's native top-k)",
             "residency and expert_bytes columns ignored (the recording engine's own cache state)"]
    bvals = sorted(set(layer_bytes.values()))
    expert_bytes = max(bvals)
    per_layer = tuple(layer_bytes.get(l, expert_bytes) for l in range(L))
    if len(layer_bytes) != L:
        miss = sorted(set(range(L)) - set(layer_bytes))
        notes.append(f"no '# layer=' bytes line for {fmt_layers(miss)}: taken as the max, {expert_bytes} bytes")
    if len(set(per_layer)) > 1:
        notes.append(f"expert_bytes differs across layers ({len(bvals)} values, {min(bvals)}..{max(bvals)} bytes): "
                     f"kept per layer (shape.layer_bytes) for byte budgets; slot engines size a slot by the max")
        return notes, expert_bytes, per_layer
    return notes, expert_bytes, None


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
    L, E, K, layer_bytes, name, h, ci, ncols, L_line = read_preamble(path, lines)
    lineno, cols = _data_rows(path, lines, h, ncols)
    v, weight = _columns(path, cols, ci, lineno, L, E, K)

    turn, phase, step, layer, slot = (v[c] for c in ("turn", "phase", "step", "layer", "slot"))
    pstep = np.where(phase == PREFILL, -1, step)  # all prefill steps of a turn share one pass
    order = np.lexsort((slot, step, layer, pstep, phase, turn))
    turn, phase, step, layer, slot, pstep = (a[order] for a in (turn, phase, step, layer, slot, pstep))
    expert, weight, lineno = v["expert"][order], weight[order], lineno[order]
    _check_slots(path, K, turn, phase, step, layer, slot, lineno)

    ex = expert.reshape(-1, K)
    w = weight.reshape(-1, K).astype(np.float32)
    t_turn, t_phase, t_step, t_layer, t_pstep = (a[::K] for a in (turn, phase, step, layer, pstep))
    _check_top_k(path, ex, lineno)
    pass_request, pass_phase, pass_tokens, pass_last_step, rows, offsets = _passes(
        path, L, L_line, t_turn, t_phase, t_step, t_layer, t_pstep)

    notes, expert_bytes, per_layer = _shape_notes(K, L, layer_bytes)
    notes += _cell_count_notes(rows, pass_phase, pass_request, pass_tokens, pass_last_step, offsets, t_step, L)
    shape = ModelShape(name=name, num_layers=L, num_experts=E, top_k=K, expert_bytes=int(expert_bytes),
                       layer_bytes=per_layer)
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
            s = f"{fmt_layers(ls)} {verb} {r} of {pass_tokens[p]} prompt tokens"
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
                     f"first: pass {ps[0]} layer {ls[0]}; {fmt_layers(np.unique(ls))} affected")
    return notes
