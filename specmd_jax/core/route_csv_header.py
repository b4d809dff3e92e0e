"""The head of a ``# route_trace v1`` CSV: the version line, the ``#`` preamble (model shape,
per-layer expert bytes) and the column header; every error a
:class:`~specmd_jax.core.trace.TraceError` naming the file, the line, the field and the value."""

from __future__ import annotations

import os
from collections import Counter

from specmd_jax.core.limits import MAX_EXPERT_BYTES, MAX_IDS
from specmd_jax.core.reader_common import field_error, parse_int

ROUTE_TRACE_VERSION_LINE = "# route_trace v1"
CSV_COLUMNS = ("turn", "phase", "step", "layer", "slot", "expert", "weight")


def read_preamble(path: str, lines: list[str]):
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
    for c in CSV_COLUMNS:
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
    return (L, E, K, {k: b for k, (_, b) in layer_bytes.items()}, name, i, {c: cols.index(c) for c in CSV_COLUMNS},
            len(cols), hdr["n_layer"][0])
