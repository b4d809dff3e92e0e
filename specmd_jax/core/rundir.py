"""Run directories that one run owns.

:class:`RunDir` is an app's output directory. Opened before any compute: created, proved writable
by creating a claim file (``.specmd-run``, exclusive), and refused if it already holds results or
another live run's claim. :meth:`RunDir.finish` writes ``manifest.json`` last: every result file
with its size, sha256 and row count, the config, ``"complete": true``. A directory without a
manifest holds no complete run. :func:`run_job` runs an app's job in one; :func:`verify` checks a
run directory against its manifest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from specmd_jax.core.atomic import write_csv, write_text

__all__ = ["OutputError", "RunDir", "run_job", "verify", "MANIFEST", "CLAIM"]

MANIFEST = "manifest.json"
CLAIM = ".specmd-run"   # present while a run writes into the directory


class OutputError(ValueError):
    """The output directory cannot take this run's results (or fails :func:`verify`); names the path."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="microseconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, not ours
        return True
    return True


class RunDir:
    """One run's output directory (a context manager: ``with RunDir(path, names) as out:``).

    ``names`` are the result files the app may write; the directory is refused when it holds any
    of them or a manifest (results of an earlier run are never overwritten). Files written through
    :meth:`csv`, :meth:`text` and :meth:`write` are listed in the manifest by :meth:`finish`."""

    def __init__(self, path: str | Path, names: Iterable[str] = ()):
        if str(path).strip() in ("", "???"):  # "": the launch directory; "???": OmegaConf's MISSING as text
            raise OutputError(f"output_dir={str(path)!r} would write into the launch directory (or a dir named ???): "
                              "leave output_dir at its default, the hydra run directory, or name a directory")
        self.path = Path(path)
        self.names = tuple(names)
        self.files: dict[str, int | None] = {}  # name -> rows (None: not a table)
        self.started = _now()
        self._claimed = False

    def __enter__(self) -> "RunDir":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.release()

    def open(self) -> "RunDir":
        """Create the directory, prove it writable and claim it; :class:`OutputError` if not."""
        d = self.path
        if d.exists() and not d.is_dir():
            raise OutputError(f"output_dir {d} exists and is not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"output_dir {d}: cannot create the directory ({e.strerror}: {e.filename})") from None
        old = [n for n in (MANIFEST, *self.names) if (d / n).exists()]
        if old:
            state = "a complete earlier run" if MANIFEST in old else "an interrupted or failed earlier run (no manifest)"
            raise OutputError(f"output_dir {d} already holds results of {state}: {', '.join(old)}; results are "
                              "never overwritten: choose another hydra.run.dir (or output_dir), or delete them")
        self._claim()
        return self

    def _claim(self) -> None:
        claim = self.path / CLAIM
        me = dict(pid=os.getpid(), host=socket.gethostname(), started=self.started)
        for _ in range(2):
            try:
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    other = json.loads(claim.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    other = {}
                if other.get("host") == me["host"] and isinstance(other.get("pid"), int) and not _alive(other["pid"]):
                    claim.unlink(missing_ok=True)  # left by a run that was killed: take over
                    continue
                raise OutputError(f"output_dir {self.path} is in use by another run (pid {other.get('pid', '?')} on "
                                  f"{other.get('host', '?')}, started {other.get('started', '?')}); if no such run is "
                                  f"alive, delete {claim}") from None
            except OSError as e:
                raise OutputError(f"output_dir {self.path} is not writable ({e.strerror})") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self._claimed = True
            return
        raise OutputError(f"output_dir {self.path}: could not claim {claim}")

    def release(self) -> None:
        """Drop the claim (after :meth:`finish`, or on failure: then no manifest is written)."""
        if self._claimed:
            (self.path / CLAIM).unlink(missing_ok=True)
            self._claimed = False

    def write(self, name: str, writer: Callable[[Path], Any], rows: int | None = None) -> Path:
        """Write result file ``name`` (one of ``names``) with ``writer(path)``, which must write
        atomically (:func:`~specmd_jax.core.atomic.atomic_path`; e.g. :mod:`specmd_jax.study.plots`), and list
        it in the manifest. An ``OSError`` (disk full, directory removed, ...) becomes an :class:`OutputError` naming the file."""
        if name not in self.names:
            raise ValueError(f"{name!r} is not one of this run's result files {self.names}")
        try:
            writer(self.path / name)
        except OSError as e:
            raise OutputError(f"output_dir {self.path}: cannot write {name} ({e.strerror or e})") from None
        self.files[name] = rows
        return self.path / name

    def csv(self, name: str, df) -> Path:
        return self.write(name, lambda p: write_csv(p, df), rows=len(df))

    def text(self, name: str, text: str) -> Path:
        return self.write(name, lambda p: write_text(p, text))

    def finish(self, config: Any = None, **extra) -> Path:
        """Write ``manifest.json`` (last): the files written, their sizes, sha256 and rows."""
        files = []
        for name, rows in self.files.items():
            p = self.path / name
            files.append(dict(name=name, bytes=p.stat().st_size, sha256=_sha256(p), **({} if rows is None else
                                                                                       dict(rows=rows))))
        man = dict(complete=True, started=self.started, finished=_now(), output_dir=str(self.path.resolve()),
                   argv=sys.argv, pid=os.getpid(), host=socket.gethostname(), **extra, files=files, config=config)
        try:
            return write_text(self.path / MANIFEST, json.dumps(man, indent=1, default=str) + "\n")
        except OSError as e:
            raise OutputError(f"output_dir {self.path}: cannot write {MANIFEST} ({e.strerror or e})") from None


def run_job(cfg: dict, names: Iterable[str], app: str, body: Callable[[dict, "RunDir"], Any], lead: str = "") -> Any:
    """An app's job: claim ``cfg["output_dir"]`` (writable, unused) before any compute, run
    ``body(cfg, run_dir)``, write the manifest last and say what was written; ``body``'s result."""
    with RunDir(cfg["output_dir"], names) as out:
        res = body(cfg, out)
        out.finish(cfg, app=app)
    print(f"{lead}wrote {out.path}{os.sep}: {', '.join(out.files)}, manifest.json (written last: "
          "the run is complete)")
    return res


def verify(path: str | Path) -> dict:
    """The manifest of a complete run directory; :class:`OutputError` naming what is missing,
    incomplete or changed (a file whose size or sha256 differs from the manifest)."""
    d = Path(path)
    try:
        man = json.loads((d / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OutputError(f"{d}: no {MANIFEST}: the run did not complete (or is still running)") from None
    except ValueError as e:
        raise OutputError(f"{d / MANIFEST}: not valid JSON ({e})") from None
    if man.get("complete") is not True:
        raise OutputError(f"{d / MANIFEST}: not marked complete")
    bad = []
    for f in man.get("files", []):
        p = d / f["name"]
        if not p.is_file():
            bad.append(f"{f['name']} missing")
        elif p.stat().st_size != f["bytes"] or _sha256(p) != f["sha256"]:
            bad.append(f"{f['name']} changed since the run (size/sha256 differ)")
    if bad:
        raise OutputError(f"{d}: " + "; ".join(bad))
    return man
