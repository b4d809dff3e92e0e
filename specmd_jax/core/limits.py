"""Limits every trace reader checks *before* it allocates, and the file-level checks they share.

A reader must never let a small file claim a big allocation: header claims (``n_layer``, a
``.npy`` header's shape) and ids that size arrays (layer, token index) are checked here first.

* ``L * E <= MAX_IDS`` (global expert ids are int16 ranks).
* The ``(pass, layer)`` grid: at most :func:`max_cells` cells for ``R`` routed rows (a grid that is
  almost all empty cells is refused; real traces have about one row per cell or more).
* Request ids, pass tokens fit int32; ``expert_bytes <= MAX_EXPERT_BYTES``.
* ``.csv``/``.jsonl``: at most ``SPECMD_MAX_TEXT_BYTES`` (default 128 MiB; parsing holds about
  30 bytes of Python objects per byte of text, so about 4 GB at the limit), lines at most
  ``MAX_LINE_CHARS``, UTF-8 (a BOM is accepted, CRLF too); compressed or binary input is refused
  with what it looks like.
* ``.npz``: the arrays' total size claimed by their ``.npy`` headers at most
  ``SPECMD_MAX_NPZ_BYTES`` (default 4 GiB), every header checked before any data is read.
"""

from __future__ import annotations

import io
import json
import os
import stat
import zipfile
from typing import Optional

import numpy as np

MAX_IDS = 32000                    # L * E: int16 rank encoding
MAX_CELLS_FREE = 1 << 22           # a (pass, layer) grid this small is always accepted (32 MiB of offsets)
MAX_CELLS_PER_ROW = 64             # beyond it: at most this many cells per routed row
INT32_MAX = 2 ** 31 - 1            # request ids, pass tokens
MAX_EXPERT_BYTES = 2 ** 48         # bytes of one expert: all MAX_IDS experts together still fit int64
MAX_LINE_CHARS = 1 << 20           # one line of a text trace
MAX_HEADER_BYTES = 1 << 16         # one .npy header
MAX_META_CHARS = 1 << 22           # the npz 'meta' JSON string
DEFAULT_MAX_TEXT_BYTES = 128 << 20
DEFAULT_MAX_NPZ_BYTES = 4 << 30
FLOAT32_MAX = float(np.finfo(np.float32).max)

# Leading bytes of formats a trace path may hold by mistake.
_MAGIC = ((b"\x1f\x8b", "gzip-compressed: decompress it first (gunzip)"),
          (b"BZh", "bzip2-compressed: decompress it first (bunzip2)"),
          (b"\xfd7zXZ\x00", "xz-compressed: decompress it first (unxz)"),
          (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first (unzstd)"),
          (b"PK\x03\x04", "a zip archive (an .npz trace? name it .npz)"),
          (b"PK\x05\x06", "an empty zip archive"),
          (b"\x93NUMPY", "a single .npy array, not a trace (save_trace writes .npz)"),
          (b"\xff\xfe", "UTF-16 text: re-save it as UTF-8"),
          (b"\xfe\xff", "UTF-16 text: re-save it as UTF-8"))


class TraceError(ValueError):
    """A trace failed validation. The message names the file, the field and the offending value.

    Defined here (the readers' shared leaf module); its public home is :mod:`specmd_jax.core.trace`."""


TraceError.__module__ = "specmd_jax.core.trace"


def _env_bytes(name: str, default: int) -> int:
    v = os.environ.get(name)
    if v is None:
        return default
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n <= 0:
        raise TraceError(f"environment variable {name}={v!r}: must be a positive number of bytes")
    return n


def max_text_bytes() -> int:
    """Largest ``.csv``/``.jsonl`` accepted (``SPECMD_MAX_TEXT_BYTES``, default 128 MiB)."""
    return _env_bytes("SPECMD_MAX_TEXT_BYTES", DEFAULT_MAX_TEXT_BYTES)


def max_npz_bytes() -> int:
    """Largest total array size an ``.npz`` may claim (``SPECMD_MAX_NPZ_BYTES``, default 4 GiB)."""
    return _env_bytes("SPECMD_MAX_NPZ_BYTES", DEFAULT_MAX_NPZ_BYTES)


def max_cells(rows: int) -> int:
    """Most ``(pass, layer)`` cells a trace of ``rows`` routed rows may have."""
    return MAX_CELLS_FREE + MAX_CELLS_PER_ROW * max(int(rows), 0)


def grid_error(passes: int, L: int, rows: int) -> Optional[str]:
    """Why a ``passes x L`` grid is refused for ``rows`` routed rows, or None."""
    cells = int(passes) * int(L)
    if cells <= max_cells(rows):
        return None
    return (f"{passes} passes x L={L} layers = {cells} (pass, layer) cells for {rows} routed rows: "
            f"more than {MAX_CELLS_FREE} + {MAX_CELLS_PER_ROW} per row (a grid of almost only empty "
            "cells; an index or a layer count is likely wrong)")


def check_file(path: str) -> int:
    """Size of the regular file ``path``; TraceError (naming it) when missing, a directory, a
    symlink loop, a FIFO or device, or not stat-able."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise TraceError(f"{path}: no such file") from None
    except OSError as e:
        raise TraceError(f"{path}: cannot read file ({e.strerror or e})") from e
    if stat.S_ISDIR(st.st_mode):
        raise TraceError(f"{path}: is a directory, not a trace file")
    if not stat.S_ISREG(st.st_mode):
        raise TraceError(f"{path}: not a regular file (a FIFO, socket or device); copy the trace to a file")
    return st.st_size


def sniff(head: bytes) -> Optional[str]:
    """What ``head`` (a file's first bytes) looks like when it is a known non-text format."""
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    return None


def _line_of(data: bytes, pos: int) -> tuple[int, int]:
    """1-based (line, column) of byte offset ``pos``."""
    line = data.count(b"\n", 0, pos) + 1
    return line, pos - (data.rfind(b"\n", 0, pos) + 1) + 1


def read_text_lines(path: str) -> list[str]:
    """The lines of a UTF-8 text trace (BOM dropped, ``\\r\\n`` or ``\\n`` endings).

    Raises:
        TraceError: naming the file (and line) for: not a regular file, larger than
            :func:`max_text_bytes`, compressed/binary content, invalid UTF-8, a NUL byte, a line
            longer than ``MAX_LINE_CHARS``.
    """
    size = check_file(path)
    limit = max_text_bytes()
    if size > limit:
        raise TraceError(f"{path}: {size} bytes exceeds the text trace limit of {limit} bytes "
                         "(set SPECMD_MAX_TEXT_BYTES to raise it)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TraceError(f"{path}: cannot read file ({e.strerror or e})") from e
    if len(data) > limit:
        raise TraceError(f"{path}: more than {limit} bytes (the file grew while read?)")
    what = sniff(data[:8])
    if what:
        raise TraceError(f"{path}:1: not a text trace: {what}")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    nul = data.find(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        if not 0 <= nul < e.start:
            ln, col = _line_of(data, e.start)
            raise TraceError(f"{path}:{ln}: not UTF-8 text: byte {data[e.start:e.start + 1]!r} at column {col} "
                             f"({e.reason})") from None
    if nul >= 0:
        ln, col = _line_of(data, nul)
        raise TraceError(f"{path}:{ln}: binary data (a NUL byte at column {col}), not a text trace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    lens = list(map(len, lines))
    if lens and max(lens) > MAX_LINE_CHARS:
        i = lens.index(max(lens))
        raise TraceError(f"{path}:{i + 1}: line of {lens[i]} characters exceeds {MAX_LINE_CHARS} "
                         f"(starts {lines[i][:60]!r})")
    return lines


def loads_json(s: str):
    """``json.loads`` that refuses duplicate object keys and over-deep nesting (ValueError)."""
    def pairs(kv):
        d = {}
        for k, v in kv:
            if k in d:
                raise ValueError(f"duplicate key {k!r}")
            d[k] = v
        return d
    try:
        return json.loads(s, object_pairs_hook=pairs)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def npy_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[tuple, np.dtype]:
    """(shape, dtype) of the ``.npy`` member ``info``, read from its header alone.

    Raises:
        ValueError: the member is not a ``.npy`` array, its header is malformed or too long, or
            the member's size does not match the header's shape and dtype (truncated or padded).
    """
    with zf.open(info) as f:
        head = f.read(12)
        if len(head) < 10 or not head.startswith(b"\x93NUMPY"):
            raise ValueError("not a .npy array (bad magic)")
        major = head[6]
        if major == 1:
            hlen, pre = int.from_bytes(head[8:10], "little"), 10
        elif major in (2, 3):
            hlen, pre = int.from_bytes(head[8:12], "little"), 12
        else:
            raise ValueError(f".npy format version {major}.{head[7]} not supported")
        if hlen > MAX_HEADER_BYTES:
            raise ValueError(f".npy header of {hlen} bytes exceeds {MAX_HEADER_BYTES}")
        rest = f.read(pre + hlen - len(head))
    buf = io.BytesIO(head + rest)
    version = np.lib.format.read_magic(buf)
    reader = np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
    shape, _fortran, dtype = reader(buf, max_header_size=MAX_HEADER_BYTES)
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"dtype {dtype} is not a plain numeric or string type")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize if shape else dtype.itemsize
    if info.file_size != pre + hlen + nbytes:
        raise ValueError(f"member holds {info.file_size - pre - hlen} data bytes, its header "
                         f"(shape {shape}, dtype {dtype}) claims {nbytes}")
    return tuple(int(n) for n in shape), dtype
