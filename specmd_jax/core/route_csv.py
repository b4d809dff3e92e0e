"""Reader of the ``# route_trace v1`` CSV (BigMoeOnEdge / llama.cpp engine): prefill + decode,
every MoE layer, top-k ids in rank order + weights; and the error helpers every reader shares
(every error a :class:`TraceError` naming the file, the line, the field and the value)."""


from __future__ import annotations

import os
from collections import Counter

import numpy as np

from specmd_jax.core.limits import (FLOAT32_MAX, INT32_MAX, MAX_EXPERT_BYTES, MAX_IDS, grid_error, read_text_lines)
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, Trace, TraceError, make_trace

ROUTE_TRACE_VERSION_LINE = "# route_trace v1"
_CSV_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight")
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


# --------------------------------------------------------------------------- route_trace CSV


def _read_preamble(path: str, lines: list[str]):
    """Parse version line, ``#`` preamble and the column header.

    Returns:
        (L, E, K, layer_bytes dict, model name, header line index, column index map, number of
        columns, line of ``n_layer``).
    """
    if not lines:
        field_error(path, 1, "version", "", "empty file")
    first = lines[0].strip()
    if first != ROUTE_TRACE_VERSION_LINE:
        msg = ("unknown route_trace version (this reader reads v1)" if first.startswith("# route_trace")
               else f"missing version line (expected {ROUTE_TRACE_VERSION_LINE!r})")
        field_error(path, 1, "version", first, msg)
    hdr: dict[str, tuple[int, str]] = {}
    layer_bytes: dict[int, tuple[int, int]] = {}    # layer -> (line, bytes)
    i = 1
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        kv: dict[str, str] = {}
        for tok in lines[i][1:].split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                if k in kv:
                    field_error(path, i + 1, k, v, f"key given twice on this line (first {kv[k]!r})")
                kv[k] = v
        if "layer" in kv:
            if "expert_bytes" not in kv:
                field_error(path, i + 1, "expert_bytes", lines[i].strip(), "missing in layer line")
            layer = parse_int(path, i + 1, "layer", kv["layer"])
            if layer in layer_bytes:
                field_error(path, i + 1, "layer", layer, f"second '# layer=' line for it (first at line {layer_bytes[layer][0]})")
            layer_bytes[layer] = (i + 1, parse_int(path, i + 1, "expert_bytes", kv["expert_bytes"]))
        else:
            for k, v in kv.items():
                if k in hdr:
                    field_error(path, i + 1, k, v, f"header key given twice (first at line {hdr[k][0]}: {hdr[k][1]!r})")
                hdr[k] = (i + 1, v)
        i += 1
    where = min((ln for ln, _ in hdr.values()), default=2)
    dims = []
    for f in ("n_layer", "n_expert", "n_expert_used"):
        if f not in hdr:
            field_error(path, where, f, None, "missing header field")
        ln, v = hdr[f]
        n = parse_int(path, ln, f, v)
        if n <= 0:
            field_error(path, ln, f, v, "must be positive")
        dims.append(n)
    L, E, K = dims
    if L * E > MAX_IDS:   # before anything is sized by L or E
        field_error(path, hdr["n_layer"][0], "n_layer", L, f"n_layer * n_expert = {L * E} exceeds {MAX_IDS} "
             "(int16 rank encoding limit)")
    if K > E:
        field_error(path, hdr["n_expert_used"][0], "n_expert_used", K, f"exceeds n_expert={E}")
    if not layer_bytes:
        field_error(path, where, "expert_bytes", None, "missing header field (no '# layer=<i> expert_bytes=' line)")
    for layer, (ln, b) in layer_bytes.items():
        if not 0 <= layer < L:
            field_error(path, ln, "layer", layer, f"'# layer=' line out of range [0, {L}) (n_layer={L})")
        if not 0 < b <= MAX_EXPERT_BYTES:
            field_error(path, ln, "expert_bytes", b, f"not in [1, {MAX_EXPERT_BYTES}]")
    if i >= len(lines):
        field_error(path, i, "header", None, "missing column header line")
    cols = [c.strip() for c in lines[i].split(",")]
    for c in _CSV_COLUMNS:
        if c not in cols:
            field_error(path, i + 1, c, lines[i].strip(), "missing column in header")
    dup = sorted(c for c, n in Counter(cols).items() if n > 1)     # not cols.count: a 1 MiB header is 500k columns
    if dup:
        field_error(path, i + 1, dup[0], lines[i].strip(), "column named twice in header")
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
        field_error(path, len(lines), "rows", 0, "no data rows")
    lineno = np.fromiter((n for n, _ in data), np.int64, len(data))
    rows = [ln.split(",") for _, ln in data]
    for (n, ln), r in zip(data, rows):
        if len(r) != ncols:
            field_error(path, n, "columns", ln, f"{len(r)} fields, header has {ncols}")
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
                parse_int(path, int(n), c, x)
            raise
        lo, hi, why = limits[c]
        if min(vals) < lo or max(vals) >= hi:
            j = next(j for j, x in enumerate(vals) if not lo <= x < hi)
            field_error(path, int(lineno[j]), c, vals[j], f"out of range [{lo}, {hi}){why}")
        return np.array(vals, np.int64)

    v = {c: int_col(c) for c in _CSV_COLUMNS if c != "weight"}
    try:
        weight = np.array([float(x) for x in cols[ci["weight"]]], np.float64)
    except ValueError:
        for n, x in zip(lineno, cols[ci["weight"]]):
            try:
                float(x)
            except ValueError:
                field_error(path, int(n), "weight", x, "not a number")
        raise
    bad = ~np.isfinite(weight) | (weight < 0) | (weight > FLOAT32_MAX)
    if bad.any():
        j = int(np.argmax(bad))
        field_error(path, int(lineno[j]), "weight", cols[ci["weight"]][j], "negative, not finite or beyond float32")

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

    ex = expert.reshape(-1, K)
    w = weight.reshape(-1, K).astype(np.float32)
    t_turn, t_phase, t_step, t_layer, t_pstep = (a[::K] for a in (turn, phase, step, layer, pstep))
    srt = np.sort(ex, axis=1)
    d = np.any(srt[:, 1:] == srt[:, :-1], axis=1) if K > 1 else np.zeros(len(ex), bool)
    if d.any():
        r = int(np.argmax(d))
        k = next(k for k in range(1, K) if ex[r, k] in ex[r, :k])
        field_error(path, int(lineno[r * K + k]), "expert", int(ex[r, k]),
             f"duplicate expert id in one token's top-k {ex[r].tolist()}")

    # Passes: key (turn, phase, pstep) changes; rows are already in (pass, layer, step) order.
    T = len(ex)
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

    notes = [f"top_k K={K} is the recorded n_expert_used (the run may override the model's native top-k)",
             "residency and expert_bytes columns ignored (the recording engine's own cache state)"]
    bvals = sorted(set(layer_bytes.values()))
    expert_bytes = max(bvals)
    if len(bvals) > 1:
        notes.append(f"expert_bytes differs across layers ({len(bvals)} values, {min(bvals)}..{max(bvals)} bytes); "
                     f"using the max {expert_bytes} for every layer")
    if len(layer_bytes) != L:
        miss = sorted(set(range(L)) - set(layer_bytes))
        notes.append(f"no '# layer=' bytes line for {fmt_layers(miss)}")
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
