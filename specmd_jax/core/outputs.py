"""Result files that are complete or absent, and run directories that one run owns: the apps'
one import for both (the writes live in :mod:`specmd_jax.core.atomic`, the run directories in
:mod:`specmd_jax.core.rundir`, the error policy in :mod:`specmd_jax.core.guard`; the job
directory names here).

* :func:`atomic_path` / :func:`write_text` / :func:`write_csv`: a result file appears under its
  name only once fully written (temporary name in the same directory, fsync, ``os.replace``); an
  interrupted write leaves the old file or none, never a truncated one.
* :class:`RunDir`: an app's output directory. Opened before any compute: created, proved writable
  by creating a claim file (``.specmd-run``, exclusive), and refused if it already holds results
  or another live run's claim. :meth:`RunDir.finish` writes ``manifest.json`` last: every result
  file with its size, sha256 and row count, the config, ``"complete": true``. A directory
  without a manifest holds no complete run.
* :func:`verify`: check a run directory against its manifest.
* :func:`guarded`: the apps' error policy: input errors print one ``error:`` line and exit 2,
  Ctrl-C (or SIGTERM) exits 130 (143) without a manifest, anything else (a bug) keeps its traceback.
* :func:`job_dirname`: multirun job directory names (``${specmd_dirname:...}`` in ``conf/``):
  no path separators, bounded length.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from specmd_jax.core.atomic import atomic_path, write_csv, write_text
from specmd_jax.core.guard import EXIT_INPUT, EXIT_INTERRUPT, EXIT_TERMINATED, Terminated, guarded
from specmd_jax.core.rundir import CLAIM, MANIFEST, OutputError, RunDir, run_job, verify

__all__ = ["OutputError", "RunDir", "atomic_path", "write_text", "write_csv", "verify", "guarded", "job_dirname",
           "MANIFEST", "CLAIM", "EXIT_INPUT", "EXIT_INTERRUPT", "EXIT_TERMINATED", "run_job", "Terminated"]

DIRNAME_MAX = 120       # bytes of a multirun job directory name (filesystems allow 255)


def job_dirname(name: Any) -> str:
    """A multirun job directory name from hydra's ``override_dirname``: path separators become
    ``_`` (a value like ``../x`` cannot leave the sweep directory) and a name longer than
    :data:`DIRNAME_MAX` bytes is cut and ends in ``~`` + 8 hex digits of its sha1 (still unique)."""
    s = str(name).replace("/", "_").replace(os.sep, "_")
    b = s.encode("utf-8", errors="surrogateescape")
    if len(b) <= DIRNAME_MAX:
        return s
    return b[:DIRNAME_MAX - 9].decode("utf-8", errors="ignore") + "~" + hashlib.sha1(b).hexdigest()[:8]


def register_resolvers() -> None:
    """Register ``${specmd_dirname:...}`` (:func:`job_dirname`) with OmegaConf for ``conf/``."""
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("specmd_dirname"):
        OmegaConf.register_new_resolver("specmd_dirname", job_dirname)


try:  # at import: hydra's joblib workers import this module (the apps use it) before loading the config
    register_resolvers()
except ImportError:  # the library without hydra/omegaconf
    pass
