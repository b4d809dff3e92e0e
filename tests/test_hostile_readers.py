"""Hostile input to the trace readers: bounded cost, no silent wrong numbers, every
input error a TraceError naming the file, the line or field, and the value.

Expected values are written by hand from the tiny inputs below, or compared with the same trace
read from a plain (LF, no BOM) copy whose reading tests/test_trace_io.py checks by hand.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import specmd_jax
from specmd_jax.core.limits import MAX_CELLS_FREE, MAX_CELLS_PER_ROW, MAX_LINE_CHARS
from specmd_jax.core.readers import MAX_NOTES, load_trace, read_expert_jsonl, read_route_trace_csv
from specmd_jax.core.npz import load_npz, save_trace
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, TraceError, make_trace

ROOT = Path(specmd_jax.__file__).resolve().parents[1]


def names(err: pytest.ExceptionInfo, *parts: str) -> str:
    """Assert the error message holds every part (file, line, field, value); return it."""
    msg = str(err.value)
    for p in parts:
        assert p in msg, (p, msg)
    return msg


@contextmanager
def deadline(s: int):
    """Fail instead of hanging (a reader that opens a FIFO blocks forever)."""
    def boom(*_):
        raise AssertionError(f"took more than {s} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(s)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- tiny inputs

CSV_PRE = ("# route_trace v1\n"
           "# model=/x/Tiny.gguf arch=tiny n_layer={L} n_expert={E} n_expert_used=2\n"
           "# layer=0 expert_bytes=100 dense_bytes=1\n"
           "turn,phase,step,layer,slot,expert,weight,residency,expert_bytes\n")


def csv_rows(turn=0, phase=1, step=0, layer=0, ex=(0, 1), w=("0.6", "0.4")) -> str:
    """The K=2 rows of one token cell."""
    return "".join(f"{turn},{phase},{step},{layer},{s},{e},{w[s]},0,0\n" for s, e in enumerate(ex))


def small_csv(L=1, E=4) -> str:
    """Decode steps 0 and 1 of one request at layer 0 (file lines 5-8)."""
    return CSV_PRE.format(L=L, E=E) + csv_rows(step=0, ex=(0, 1)) + csv_rows(step=1, ex=(2, 3))


def jrec(**kw) -> str:
    r = {"dataset": "d", "problem_id": 0, "layer": 0, "experts": [0, 1], "gating_probs": [0.7, 0.3], "token_idx": 0}
    r.update(kw)
    return json.dumps(r) + "\n"


def small_jsonl() -> str:
    """Problem 0, tokens 0 and 1, layers 0 and 1 (4 records, lines 1-4)."""
    return "".join(jrec(layer=layer, token_idx=tok, experts=[tok, 2 + layer]) for tok in range(2) for layer in range(2))


def good_arrays() -> dict:
    """L=2, E=4, K=2: pass 0 prefill of 2 tokens, pass 1 decode of 1 token."""
    return dict(pass_request=np.array([0, 0], np.int32), pass_phase=np.array([PREFILL, DECODE], np.int8),
                pass_tokens=np.array([2, 1], np.int32), cell_offsets=np.array([0, 2, 4, 5, 6], np.int64),
                experts=np.array([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3]], np.int16),
                weights=np.full((6, 2), 0.5, np.float32))


META = {"format_version": 3, "source": "hand", "notes": [], "has_weights": True,
        "shape": {"name": "tiny", "num_layers": 2, "num_experts": 4, "top_k": 2, "expert_bytes": 100}}


def write_npz(path, meta=None, **arrays):
    m = dict(META, has_weights="weights" in arrays) if meta is None else meta
    np.savez(path, meta=np.array(json.dumps(m) if not isinstance(m, str) else m), **arrays)
    return path


def write(path: Path, data) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------- raw zip (for bombs)


def npy_header(shape, dtype) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def deflated_member(header: bytes, zeros: int = 0, data: bytes = b""):
    """(raw deflate, crc32, size) of ``header + data + zeros`` zero bytes. After a full flush the
    compressor starts afresh, so every further MiB of zeros deflates to the same ~1 KiB: a 768 MiB
    member costs a few ms to build (and 0.2 s of crc32)."""
    chunk = 1 << 20
    assert zeros % chunk == 0
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = co.compress(header + data) + co.flush(zlib.Z_FULL_FLUSH)
    block = co.compress(bytes(chunk)) + co.flush(zlib.Z_FULL_FLUSH) if zeros else b""
    out += block * (zeros // chunk) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = zlib.crc32(header + data)
    z = bytes(chunk)
    for _ in range(zeros // chunk):
        crc = zlib.crc32(z, crc)
    return out, crc, len(header) + len(data) + zeros


def write_zip(path: Path, members: dict) -> Path:
    """A zip archive of pre-deflated members ``name -> (deflate, crc, size)`` (sizes < 4 GiB)."""
    out, cd = bytearray(), bytearray()
    for name, (data, crc, size) in members.items():
        nm, off = name.encode(), len(out)
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), size, len(nm), 0) + nm + data
        cd += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), size, len(nm),
                          0, 0, 0, 0, 0, off) + nm
    out += cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(cd), len(out), 0)
    path.write_bytes(bytes(out))
    return path


def member_of(a: np.ndarray):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return deflated_member(buf.getvalue())


def npz_with(path: Path, arrays: dict, bomb: tuple, meta=None) -> Path:
    """The good arrays (minus ``weights``) plus ``bomb = (field, shape, dtype)``: a member of zeros whose
    header and data honestly say ``shape``."""
    field, shape, dtype = bomb
    members = {"meta.npy": member_of(np.array(json.dumps(meta or dict(META, has_weights=False))))}
    members.update({f"{k}.npy": member_of(v) for k, v in arrays.items() if k != field})
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    members[f"{field}.npy"] = deflated_member(npy_header(shape, dtype), zeros=n)
    return write_zip(path, members)


# --------------------------------------------------------------------------- 1. tiny files, big claims

HEADROOM = 512 << 20   # bytes of address space the child may add after its imports

CHILD = r"""
import resource, sys, time
from specmd_jax.core.readers import load_trace
from specmd_jax.core.trace import TraceError
vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_AS)[1]))
for p in sys.argv[2:]:
    t0 = time.perf_counter()
    try:
        load_trace(p)
        out = "LOADED"
    except TraceError as e:
        out = "TRACEERROR " + " ".join(str(e).split())[:400]
    except MemoryError:
        out = "MEMORYERROR"
    print(f"{time.perf_counter() - t0:.3f} {out}", flush=True)
# the peak of this process's own memory map (VmHWM; getrusage's ru_maxrss survives exec and would
# report the parent's peak, e.g. a pytest worker that ran the JAX tests)
print("MAXRSS_KIB", next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


def tiny_hostile_files(d: Path) -> dict:
    """name -> (path, the words the refusal must contain)."""
    files = {}
    files["csv_n_layer_1e9"] = (write(d / "n9.csv", small_csv(L=10 ** 9)), ["n9.csv:2:", "'n_layer'", "1000000000"])
    files["csv_n_layer_1e7"] = (write(d / "n7.csv", small_csv(L=10 ** 7)), ["n7.csv:2:", "'n_layer'", "10000000"])
    # 50 ordinary records and one at layer 10**6 (about 7 KB): L would be 10**6 + 1
    recs = "".join(jrec(token_idx=t) for t in range(50)) + jrec(layer=10 ** 6)
    files["jsonl_layer_1e6"] = (write(d / "l6.jsonl", recs), ["l6.jsonl:51:", "'layer'", "1000000"])
    files["jsonl_token_1e9"] = (write(d / "t9.jsonl", jrec() + jrec(token_idx=10 ** 9)),
                                ["t9.jsonl:2:", "'token_idx'", "1000000000"])
    # 2,100 decode steps, each at layer 0 only, of n_layer=8000: 16.8 M cells for 2,100 rows
    steps = "".join(csv_rows(step=s) for s in range(2100))
    files["csv_sparse_grid"] = (write(d / "sparse.csv", CSV_PRE.format(L=8000, E=4) + steps),
                                ["sparse.csv:2:", "'n_layer'", "8000", "cells"])
    a = good_arrays()
    del a["weights"]
    # 768 MiB of honest zeros behind a 1.2 MB file: 64 columns where meta says K=2
    files["npz_bomb_wrong_K"] = (npz_with(d / "bombk.npz", a, ("experts", ((768 << 20) // 128, 64), np.int16)),
                                 ["bombk.npz", "'experts'", "(6291456, 64)", "K=2"])
    # the same size with the right K: offsets end at row 6, the header claims 201,326,592 rows
    files["npz_bomb_rows"] = (npz_with(d / "bombr.npz", a, ("experts", ((768 << 20) // 4, 2), np.int16)),
                              ["bombr.npz", "'cell_offsets'", "201326592", "ends 6"])
    return files


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc/self/status")
def test_tiny_files_refused_in_bounded_memory_and_time(tmp_path):
    """Every tiny file is refused with a TraceError while the reader may add at most 512 MiB of
    address space to its imports (before the fix: MemoryError, after up to 20 s). Speed is not
    asserted here (benchmarks measure it); the child's run time is printed on failure."""
    files = tiny_hostile_files(tmp_path)
    for p, _ in files.values():
        assert p.stat().st_size < 1_300_000
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", CHILD, str(HEADROOM), *(str(p) for p, _ in files.values())],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    out = r.stdout.splitlines()
    assert r.returncode == 0 and len(out) == len(files) + 1, (r.returncode, r.stdout, r.stderr[-2000:])
    for (name, (_, words)), line in zip(files.items(), out):
        secs, verdict = line.split(" ", 1)
        assert verdict.startswith("TRACEERROR"), (name, line)
        assert all(w in verdict for w in words), (name, words, line)
    assert int(out[-1].split()[1]) < 400 * 1024, out[-1]   # peak RSS of the whole child, KiB


def test_npz_headers_checked_before_data_is_read(tmp_path, monkeypatch):
    """Shape claims that contradict meta or each other are refused from the .npy headers alone:
    no member's data is read (read_array never runs for the claimed field)."""
    read = []
    real = np.lib.format.read_array
    monkeypatch.setattr(np.lib.format, "read_array", lambda f, **kw: read.append(1) or real(f, **kw))
    cases = {   # field -> (bad value, words in the message)
        "experts": (np.zeros((6, 3), np.int16), ["(6, 3)", "K=2"]),
        "pass_request": (np.zeros(3, np.int32), ["(3,)", "(2,)"]),
        "cell_offsets": (np.array([0, 2, 4, 6], np.int64), ["(4,)", "(5,)"]),
        "pred_scores": (np.zeros((4, 3), np.float32), ["(4, 3)", "(4, 4)"]),
        "pass_phase": (np.zeros((2, 1), np.int8), ["(2, 1)", "1-D"]),
        "weights": (np.array([["0.5"] * 2] * 6), ["<U3", "real number"]),
    }
    for field, (bad, words) in cases.items():
        a = good_arrays()
        a[field] = bad
        p = write_npz(tmp_path / f"{field}.npz", **a)
        read.clear()
        with pytest.raises(TraceError) as e:
            load_npz(p)
        names(e, str(p), f"'{field}'", *words)
        assert read == [1], (field, "only meta may be read before the shapes are checked")


def test_npz_size_limit_and_truncated_member(tmp_path, monkeypatch):
    a = good_arrays()
    p = write_npz(tmp_path / "ok.npz", **a)
    monkeypatch.setenv("SPECMD_MAX_NPZ_BYTES", "129")   # the good arrays take 8+2+8+40+24+48 = 130 bytes
    with pytest.raises(TraceError) as e:
        load_npz(p)
    names(e, str(p), "130 bytes", "SPECMD_MAX_NPZ_BYTES")
    monkeypatch.setenv("SPECMD_MAX_NPZ_BYTES", "130")
    assert load_npz(p).num_passes == 2
    monkeypatch.delenv("SPECMD_MAX_NPZ_BYTES")
    # a header claiming 10**9 rows over 24 stored bytes
    members = {"meta.npy": member_of(np.array(json.dumps(META)))}
    members.update({f"{k}.npy": member_of(v) for k, v in a.items() if k != "experts"})
    members["experts.npy"] = deflated_member(npy_header((10 ** 9, 2), np.int16), data=a["experts"].tobytes())
    q = write_zip(tmp_path / "trunc.npz", members)
    with pytest.raises(TraceError) as e:
        load_npz(q)
    names(e, str(q), "'experts'", "24 data bytes", "(1000000000, 2)")


def test_grid_limit_counts_cells_per_row():
    """The (pass, layer) grid limit, by hand: 2**22 + 64 cells per routed row."""
    assert (MAX_CELLS_FREE, MAX_CELLS_PER_ROW) == (1 << 22, 64)
    L, rows = 8, 1
    P_ok = (MAX_CELLS_FREE + 64) // L
    t = make_trace(ModelShape("m", L, 4, 2, 1), np.zeros(P_ok), np.ones(P_ok), np.ones(P_ok),
                   np.r_[0, np.ones(P_ok * L, np.int64)], [[0, 1]], None)
    assert t.num_passes == P_ok and t.experts.shape == (rows, 2)
    with pytest.raises(TraceError) as e:
        make_trace(ModelShape("m", L, 4, 2, 1), np.zeros(P_ok + 1), np.ones(P_ok + 1), np.ones(P_ok + 1),
                   np.r_[0, np.ones((P_ok + 1) * L, np.int64)], [[0, 1]], None)
    names(e, "'cell_offsets'", f"{(P_ok + 1) * L} (pass, layer) cells for 1 routed rows")


# --------------------------------------------------------------------------- 2. canonical-format gaps


def _npz_case(kind):
    a, meta = good_arrays(), None
    if kind == "negative_tokens":
        a["pass_tokens"][1] = -7
        return a, meta, "pass_tokens", ["pass 1", "-7"]
    if kind == "tokens_below_rows":
        a["pass_tokens"][0] = 1                      # its cells hold 2 rows
        return a, meta, "pass_tokens", ["pass 0 has 1 tokens", "2 rows"]
    if kind == "negative_request":
        a["pass_request"][0] = -3
        return a, meta, "pass_request", ["-3"]
    if kind == "phase_2d":
        a["pass_phase"] = a["pass_phase"][:, None]
        return a, meta, "pass_phase", ["(2, 1)"]
    if kind == "weights_strings":
        a["weights"] = a["weights"].astype(str)
        return a, meta, "weights", ["<U", "not a real number type"]
    if kind == "weights_complex":
        a["weights"] = a["weights"] + 1j
        return a, meta, "weights", ["complex64"]
    if kind == "weights_beyond_float32":
        a["weights"] = a["weights"].astype(np.float64)
        a["weights"][2, 1] = 1e300
        return a, meta, "weights", ["1e+300", "(2, 1)", "float32"]
    if kind == "experts_float":
        a["experts"] = a["experts"].astype(np.float64)
        return a, meta, "experts", ["float64", "not an integer type"]
    if kind == "experts_bool":
        a["experts"] = a["experts"].astype(bool)
        return a, meta, "experts", ["bool", "not an integer type"]
    if kind == "request_over_int32":
        a["pass_request"] = np.array([0, 2 ** 32], np.int64)   # would wrap to 0, merging the requests
        return a, meta, "pass_request", ["4294967296", "int32"]
    if kind == "meta_not_object":
        return a, "[1, 2]", "meta", ["JSON object", "list"]
    if kind == "meta_shape_bool":
        meta = json.loads(json.dumps(META))
        meta["shape"]["num_layers"] = True
        return a, meta, "shape.num_layers", ["True"]
    if kind == "meta_notes_string":
        meta = dict(META, notes="abc")                 # was split into the notes 'a', 'b', 'c'
        return a, meta, "meta.notes", ["abc"]
    if kind == "meta_duplicate_key":
        return a, json.dumps(META)[:-1] + ', "format_version": 1}', "meta", ["duplicate key 'format_version'"]
    if kind == "has_weights_but_none":
        del a["weights"]
        meta = dict(META, has_weights=True)
        return a, meta, "weights", ["has_weights=True", "missing"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["negative_tokens", "tokens_below_rows", "negative_request", "phase_2d",
                                  "weights_strings", "weights_complex", "weights_beyond_float32", "experts_float",
                                  "experts_bool", "request_over_int32", "meta_not_object", "meta_shape_bool",
                                  "meta_notes_string", "meta_duplicate_key", "has_weights_but_none"])
def test_npz_field_checks(tmp_path, kind):
    a, meta, field, words = _npz_case(kind)
    p = write_npz(tmp_path / f"{kind}.npz", meta=meta, **a)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, str(p), f"'{field}'", *words)


@pytest.mark.parametrize("field,value,words", [
    ("pass_request", [0, 2 ** 32], ["4294967296", "int32"]),
    ("pass_phase", [0, 256], ["256", "int8"]),                 # would wrap to 0 = prefill
    ("experts", [[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, -65535]], ["-65535", "int16"]),   # would wrap to 1
    ("cell_offsets", [0, 2, 4, 5.5, 6], ["5.5", "whole number"]),
    ("pass_tokens", [2, -7], ["-7", "negative"]),
    ("weights", [["0.5", "0.5"]] * 6, ["not a real number type"]),
    ("weights", [[0.5, 0.5j]] * 6, ["complex128"]),
])
def test_make_trace_refuses_casts_that_change_values(field, value, words):
    a = good_arrays()
    a[field] = value
    with pytest.raises(TraceError) as e:
        make_trace(ModelShape("tiny", 2, 4, 2, 100), a["pass_request"], a["pass_phase"], a["pass_tokens"],
                   a["cell_offsets"], a["experts"], a["weights"], source="hand")
    names(e, "hand", f"'{field}'", *words)


def test_text_request_ids_over_int32(tmp_path):
    """Request ids 2**32 apart merged through int32 (TTFT doubled): now refused; the largest
    int32 id still reads as a request of its own."""
    c = write(tmp_path / "r.csv", CSV_PRE.format(L=1, E=4) + csv_rows(turn=0) + csv_rows(turn=2 ** 32, step=1))
    with pytest.raises(TraceError) as e:
        load_trace(c)
    names(e, f"{c}:7:", "'turn'", "4294967296")
    j = write(tmp_path / "r.jsonl", jrec() + jrec(problem_id=2 ** 32))
    with pytest.raises(TraceError) as e:
        load_trace(j)
    names(e, f"{j}:2:", "'problem_id'", "4294967296")
    top = 2 ** 31 - 1
    t = load_trace(write(tmp_path / "ok.csv", CSV_PRE.format(L=1, E=4) + csv_rows(turn=0) + csv_rows(turn=top)))
    assert sorted(t.pass_request.tolist()) == [0, top]
    t = load_trace(write(tmp_path / "ok.jsonl", jrec() + jrec(problem_id=top)))
    assert sorted(t.pass_request.tolist()) == [0, top]


# --------------------------------------------------------------------------- 3. raw exceptions


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_non_utf8_names_line(tmp_path, kind):
    text = small_csv() if kind == "csv" else small_jsonl()
    lines = text.encode().split(b"\n")
    lines[2] = lines[2] + b"\xff"                            # file line 3
    p = write(tmp_path / f"x.{kind}", b"\n".join(lines))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, f"{p}:3:", "not UTF-8", "xff")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_compressed_input_refused_with_advice(tmp_path, kind):
    text = small_csv() if kind == "csv" else small_jsonl()
    p = write(tmp_path / f"x.{kind}", gzip.compress(text.encode()))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, str(p), "gzip-compressed", "decompress")
    q = write(tmp_path / f"x.{kind}.gz", gzip.compress(text.encode()))
    with pytest.raises(TraceError) as e:
        load_trace(q)
    names(e, str(q), "decompress")


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_bom_and_crlf_read_as_plain(tmp_path, kind):
    text = small_csv() if kind == "csv" else small_jsonl()
    plain = load_trace(write(tmp_path / f"plain.{kind}", text))
    for name, data in (("bom", b"\xef\xbb\xbf" + text.encode()), ("crlf", text.replace("\n", "\r\n").encode()),
                       ("both", b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())):
        t = load_trace(write(tmp_path / f"{name}.{kind}", data))
        assert t.experts.tolist() == plain.experts.tolist() and t.weights.tolist() == plain.weights.tolist()
        assert t.cell_offsets.tolist() == plain.cell_offsets.tolist() and t.shape == plain.shape
    assert plain.experts.tolist() == ([[0, 1], [2, 3]] if kind == "csv" else [[0, 2], [0, 3], [1, 2], [1, 3]])


def test_integers_over_int64(tmp_path):
    c = write(tmp_path / "x.csv", small_csv().replace("0,1,1,0,1,3,", f"0,1,{10 ** 30},0,1,3,"))
    with pytest.raises(TraceError) as e:
        load_trace(c)
    names(e, f"{c}:8:", "'step'", str(10 ** 30))
    j = write(tmp_path / "x.jsonl", jrec() + jrec(token_idx=10 ** 30))
    with pytest.raises(TraceError) as e:
        load_trace(j)
    names(e, f"{j}:2:", "'token_idx'", str(10 ** 30))
    j = write(tmp_path / "p.jsonl", jrec().replace("0.7", "1" + "0" * 400))
    with pytest.raises(TraceError) as e:
        load_trace(j)
    names(e, f"{j}:1:", "'gating_probs'", "float32")


def test_paths_that_are_not_files(tmp_path):
    d = tmp_path / "dir.csv"
    d.mkdir()
    with pytest.raises(TraceError) as e:
        load_trace(d)
    names(e, str(d), "is a directory")
    loop = tmp_path / "loop.npz"
    loop.symlink_to(loop)
    with pytest.raises(TraceError) as e:
        load_trace(loop)
    names(e, str(loop), "symbolic links")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    with deadline(10):
        for reader in (load_trace, read_expert_jsonl, read_route_trace_csv, load_npz):
            with pytest.raises(TraceError) as e:
                reader(fifo)
            names(e, str(fifo), "not a regular file")
    with pytest.raises(TraceError) as e:
        load_trace(tmp_path / "missing.csv")
    names(e, "missing.csv", "no such file")


def test_npz_that_is_not_an_npz(tmp_path):
    p = tmp_path / "a.npz"
    np.save(tmp_path / "a.npy", np.zeros(3))
    os.replace(tmp_path / "a.npy", p)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, str(p), "single .npy array")
    whole = write_npz(tmp_path / "ok.npz", **good_arrays()).read_bytes()
    for name, data, words in (("empty.npz", b"", ["not an npz", "b''"]),
                              ("gz.npz", gzip.compress(b"x"), ["gzip-compressed"]),
                              ("cut.npz", whole[:200], ["not a readable npz"])):
        q = write(tmp_path / name, data)
        with pytest.raises(TraceError) as e:
            load_trace(q)
        names(e, str(q), *words)


def test_npz_members_duplicate_or_unknown(tmp_path):
    a = good_arrays()
    members = {"meta.npy": member_of(np.array(json.dumps(META)))}
    members.update({f"{k}.npy": member_of(v) for k, v in a.items()})
    extra = dict(members, **{"junk.npy": member_of(np.zeros(2))})
    p = write_zip(tmp_path / "junk.npz", extra)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, str(p), "'junk'", "unknown member")
    # zip allows one name twice; np.load silently took the last experts
    raw = bytearray((tmp_path / "junk.npz").read_bytes())
    q = tmp_path / "dup.npz"
    q.write_bytes(bytes(raw).replace(b"junk.npy", b"meta.npy"))
    with pytest.raises(TraceError) as e:
        load_trace(q)
    names(e, str(q), "'meta'", "twice")


def test_save_trace_refuses_other_suffixes_and_keeps_old_file(tmp_path):
    t = make_trace(ModelShape("tiny", 2, 4, 2, 100), **good_arrays())
    bad = tmp_path / "x.csv"
    with pytest.raises(TraceError) as e:
        save_trace(t, bad)
    names(e, str(bad), ".npz")
    assert not bad.exists()
    p = tmp_path / "t.npz"
    save_trace(t, p)
    broken = dataclasses.replace(t, pass_tokens=np.array([2, -7], np.int32))
    with pytest.raises(TraceError) as e:
        save_trace(broken, p)
    names(e, "'pass_tokens'", "-7")
    assert load_npz(p).pass_tokens.tolist() == [2, 1]          # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["t.npz"]           # no temporary left behind


# --------------------------------------------------------------------------- 4. further probes


def _csv_probe(kind):
    pre, body = CSV_PRE.format(L=1, E=4), csv_rows(step=0) + csv_rows(step=1, ex=(2, 3))
    if kind == "empty":
        return "", 1, "'version'", ["empty file"]
    if kind == "truncated_last_line":
        return pre + body[:-6], 8, "'columns'", ["0,1,1,0,1,3"]
    if kind == "inf_weight":
        return pre + body.replace("0.4", "inf", 1), 6, "'weight'", ["'inf'"]
    if kind == "weight_beyond_float32":
        return pre + body.replace("0.4", "1e39", 1), 6, "'weight'", ["1e39", "float32"]
    if kind == "duplicate_key_one_line":
        return pre.replace("n_expert=4", "n_expert=4 n_expert=8"), 2, "'n_expert'", ["'8'", "twice"]
    if kind == "duplicate_key_two_lines":
        return pre.replace("turn,", "# n_layer=2\nturn,") + body, 4, "'n_layer'", ["'2'", "first at line 2"]
    if kind == "duplicate_layer_line":
        return pre.replace("turn,", "# layer=0 expert_bytes=999\nturn,") + body, 4, "'layer'", ["first at line 3"]
    if kind == "layer_line_out_of_range":    # its bytes were taken as the model's expert_bytes
        return pre.replace("turn,", "# layer=7 expert_bytes=999999\nturn,") + body, 4, "'layer'", ["7", "[0, 1)"]
    if kind == "expert_bytes_huge":
        return pre.replace("expert_bytes=100", f"expert_bytes={2 ** 62}") + body, 3, "'expert_bytes'", [str(2 ** 62)]
    if kind == "duplicate_column":
        return pre.replace("residency", "expert") + body, 4, "'expert'", ["column named twice"]
    if kind == "k_over_e":
        return pre.replace("n_expert=4", "n_expert=1"), 2, "'n_expert_used'", ["n_expert=1"]
    if kind == "line_separator_in_name":        # str.splitlines also splits at U+2028: later lines were off by one
        return pre.replace("Tiny.gguf", "Ti\u2028ny.gguf") + body.replace("0,1,1,0,1,3", "0,1,1,0,1,9"), 8, \
            "'expert'", ["9"]
    if kind == "nul_byte":
        return pre + body.replace("0.4", "0\x004", 1), 6, "binary data", []
    if kind == "long_line":
        return pre + "9" * (MAX_LINE_CHARS + 1) + "\n" + body, 5, "line of", [str(MAX_LINE_CHARS + 1)]
    if kind == "many_columns":                   # 300k columns in a 1 MiB header: checked in linear time
        return pre.replace("expert_bytes\n", "expert_bytes" + ",x" * 300_000 + "\n"), 4, "'x'", ["named twice"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated_last_line", "inf_weight", "weight_beyond_float32",
                                  "duplicate_key_one_line", "duplicate_key_two_lines", "duplicate_layer_line",
                                  "layer_line_out_of_range", "expert_bytes_huge", "duplicate_column", "k_over_e",
                                  "line_separator_in_name", "nul_byte", "long_line", "many_columns"])
def test_csv_probes(tmp_path, kind):
    text, line, field, words = _csv_probe(kind)
    p = write(tmp_path / f"{kind}.csv", text)
    with deadline(20), pytest.raises(TraceError) as e:
        load_trace(p)
    msg = names(e, f"{p}:{line}:", field, *words)
    assert len(msg) < 600, msg                  # a long line is cut, not pasted whole


def _jsonl_probe(kind):
    if kind == "empty":
        return "", 0, "'rows'", ["empty file"]
    if kind == "truncated_last_line":
        return small_jsonl()[:-20], 4, "'json'", ["not valid JSON"]
    if kind == "infinity_prob":
        return jrec() + jrec(token_idx=1).replace("0.3", "Infinity"), 2, "'gating_probs'", ["inf"]
    if kind == "duplicate_key":
        return jrec() + jrec(token_idx=1).replace('"layer": 0', '"layer": 0, "layer": 5'), 2, "'json'", \
            ["duplicate key 'layer'"]
    if kind == "deep_nesting":
        return jrec() + "[" * 100_000 + "\n", 2, "'json'", ["nested too deeply"]
    if kind == "long_line":
        return jrec() + jrec(token_idx=1).replace("[0, 1]", "[" + "0, " * MAX_LINE_CHARS + "1]"), 2, "line of", []
    if kind == "layer_over_limit":           # L = max layer + 1 = 4001, L*E = 32008
        return jrec() + jrec(layer=4000), 2, "'layer'", ["4000", "32000"]
    if kind == "nul_byte":
        return jrec() + "\x00\n", 2, "binary data", []
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["empty", "truncated_last_line", "infinity_prob", "duplicate_key", "deep_nesting",
                                  "long_line", "layer_over_limit", "nul_byte"])
def test_jsonl_probes(tmp_path, kind):
    text, line, field, words = _jsonl_probe(kind)
    p = write(tmp_path / f"{kind}.jsonl", text)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    msg = names(e, f"{p}:{line}:", field, *words)
    assert len(msg) < 600, msg


def test_jsonl_layer_limit_edge_loads(tmp_path):
    """Layer 3999 with E=8 is L*E = 32000 exactly: accepted, L = 4000 (cells empty but noted)."""
    t = load_trace(write(tmp_path / "edge.jsonl", jrec() + jrec(layer=3999)))
    assert t.shape.num_layers == 4000 and t.experts.shape == (2, 2)
    assert np.count_nonzero(np.diff(t.cell_offsets)) == 2


def test_many_problems_cost_linear_and_notes_bounded(tmp_path):
    """20,000 one-record problems: read (the old per-problem rescans made this quadratic), and the
    notes summarise past MAX_NOTES problems instead of writing one line each."""
    n = 20_000
    p = write(tmp_path / "many.jsonl", "".join(jrec(problem_id=i, experts=[i % 8, (i + 1) % 8]) for i in range(n)))
    t = load_trace(p)
    assert t.num_passes == n and sorted(set(t.pass_request.tolist())) == list(range(n))
    assert t.experts[:, 0].tolist() == [i % 8 for i in range(n)]
    assert len(t.notes) <= MAX_NOTES + 4
    assert any(f"{n - MAX_NOTES} more problems" in s for s in t.notes)


def test_many_prefill_passes_notes_bounded(tmp_path):
    """2,000 requests whose prefill misses layer 1: one note per pass for MAX_NOTES, one summary."""
    rows = "".join(csv_rows(turn=r, phase=0, step=0) + csv_rows(turn=r, phase=0, step=1, ex=(2, 3))
                   + csv_rows(turn=r, phase=0, step=1, layer=1) for r in range(2000))
    t = load_trace(write(tmp_path / "pre.csv", CSV_PRE.format(L=2, E=4) + rows))
    assert t.num_passes == 2000 and t.pass_tokens.tolist() == [2] * 2000
    assert np.diff(t.cell_offsets).tolist() == [2, 1] * 2000
    pre = [s for s in t.notes if s.startswith("prefill pass")]
    assert len(pre) == MAX_NOTES and any("1968 more prefill passes" in s for s in t.notes)


def test_text_size_limit(tmp_path, monkeypatch):
    p = write(tmp_path / "x.csv", small_csv())
    size = p.stat().st_size
    monkeypatch.setenv("SPECMD_MAX_TEXT_BYTES", str(size - 1))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, str(p), f"{size} bytes", "SPECMD_MAX_TEXT_BYTES")
    monkeypatch.setenv("SPECMD_MAX_TEXT_BYTES", str(size))
    assert load_trace(p).num_passes == 2
    monkeypatch.setenv("SPECMD_MAX_TEXT_BYTES", "lots")
    with pytest.raises(TraceError) as e:
        load_trace(p)
    names(e, "SPECMD_MAX_TEXT_BYTES", "'lots'")


def test_save_refuses_meta_that_load_would_refuse(tmp_path):
    from specmd_jax.core.limits import MAX_META_CHARS
    t = make_trace(ModelShape("tiny", 2, 4, 2, 100), **good_arrays(), notes=["n" * MAX_META_CHARS])
    p = tmp_path / "big.npz"
    with pytest.raises(TraceError) as e:
        save_trace(t, p)
    names(e, str(p), "'meta'", str(MAX_META_CHARS))
    assert not p.exists()
