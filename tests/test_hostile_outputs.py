"""Hostile inputs and interruptions of the two hydra apps: results are complete (with a manifest)
or visibly not, runs never share a directory, bad inputs fail early with one error line, plots
stay bounded (output side; :mod:`specmd_jax.core.outputs`)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from specmd_jax.core import outputs
from specmd_jax.config.build import ConfigError, build_trace, enable_compilation_cache
from specmd_jax.core.outputs import CLAIM, DIRNAME_MAX, MANIFEST, OutputError, RunDir, atomic_path, guarded, job_dirname, verify
from specmd_jax.core.trace import TraceError

ROOT = Path(__file__).resolve().parents[1]
RUN = str(ROOT / "experiments" / "run.py")
PREFETCH = str(ROOT / "experiments" / "prefetch_run.py")
TINY = ["trace.num_requests=1", "trace.prompt_len=8", "trace.gen_len=8", "progress=false", "unroll_layers=false"]
PF_TINY = ["trace.num_requests=1", "trace.prompt_len=6", "trace.gen_len=6", "progress=false"]


def _app(script, args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".part") or p.name == CLAIM)


# ---------------------------------------------------------------- atomic files and the manifest


def test_an_interrupted_write_leaves_the_old_file_or_none(tmp_path):
    f = tmp_path / "results.csv"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(f) as tmp:
            tmp.write_text("a,b\n1,2\n")
            raise KeyboardInterrupt
    assert not f.exists() and _leftovers(tmp_path) == []
    outputs.write_text(f, "a,b\n1,2\n3,4\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(f) as tmp:
            tmp.write_text("a,b\n9,9\n")
            raise KeyboardInterrupt
    assert f.read_text() == "a,b\n1,2\n3,4\n" and _leftovers(tmp_path) == []


def test_manifest_lists_files_and_verify_catches_changes(tmp_path):
    with RunDir(tmp_path / "run", ("results.csv", "trace.txt")) as out:
        assert (out.path / CLAIM).is_file()  # claimed while running
        out.csv("results.csv", pd.DataFrame({"a": range(7)}))
        out.text("trace.txt", "notes: \udcff\n")  # an undecodable character is escaped, not fatal
        out.finish({"seed": 0}, app="test")
    man = verify(out.path)
    assert man["complete"] is True and man["config"] == {"seed": 0} and _leftovers(out.path) == []
    assert [(f["name"], f.get("rows")) for f in man["files"]] == [("results.csv", 7), ("trace.txt", None)]
    with open(out.path / "results.csv", "a") as fh:
        fh.write("7\n")
    with pytest.raises(OutputError, match=r"results\.csv changed since the run"):
        verify(out.path)
    (out.path / MANIFEST).unlink()
    with pytest.raises(OutputError, match="no manifest.json: the run did not complete"):
        verify(out.path)


def test_a_run_dir_is_refused_when_it_holds_results_or_a_live_claim(tmp_path):
    d = tmp_path / "run"
    a = RunDir(d, ("results.csv",)).open()
    with pytest.raises(OutputError, match=rf"in use by another run \(pid {os.getpid()} "):
        RunDir(d, ("results.csv",)).open()
    a.csv("results.csv", pd.DataFrame({"x": [1]}))
    a.release()  # failed before finish: results without a manifest
    with pytest.raises(OutputError, match=r"interrupted or failed earlier run \(no manifest\): results\.csv"):
        RunDir(d, ("results.csv",)).open()
    a.finish()
    with pytest.raises(OutputError, match=r"complete earlier run: manifest\.json, results\.csv; results are never"):
        RunDir(d, ("results.csv",)).open()
    # a claim left by a killed run (its pid is gone) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    e = tmp_path / "stale"
    e.mkdir()
    (e / CLAIM).write_text(json.dumps(dict(pid=dead.pid, host=socket.gethostname(), started="then")))
    with RunDir(e, ("results.csv",)) as b:
        assert json.loads((e / CLAIM).read_text())["pid"] == os.getpid()
    assert not (e / CLAIM).exists() and b.path == e


def test_a_failed_write_names_the_file_and_lists_nothing(tmp_path):
    """A full disk (simulated: the writer raises ENOSPC) is an OutputError naming the file; the
    file is not listed and no manifest follows."""
    def full(path):
        with atomic_path(path) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with RunDir(tmp_path, ("results.csv", "misses.png")) as out:
        out.csv("results.csv", pd.DataFrame({"a": [1]}))
        with pytest.raises(OutputError, match=r"cannot write misses\.png \(No space left on device\)"):
            out.write("misses.png", full)
    assert list(out.files) == ["results.csv"] and not (tmp_path / MANIFEST).exists() and _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["under_a_file", "is_a_file", "empty", "missing"])
def test_an_unusable_output_dir_is_an_output_error(tmp_path, where):
    f = tmp_path / "plain file"
    f.write_text("x")
    d = dict(under_a_file=f / "run ü", is_a_file=f, empty="", missing="???")[where]  # a file: fails for root too
    with pytest.raises(OutputError, match=re.escape(f"output_dir {d}") if isinstance(d, Path) else "launch directory"):
        RunDir(d, ("results.csv",)).open()


def test_input_errors_are_named_and_bugs_keep_their_traceback(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match=r"compilation_cache=.*cannot create .*compilation_cache=null"):
        enable_compilation_cache(str(f / "cache"))
    bad = tmp_path / "latin1.route.csv"
    bad.write_bytes(b"# route_trace v1\n# model=Qw\xffen3 arch=qwen3moe\n")
    with pytest.raises(TraceError, match=r"latin1\.route\.csv:2: not UTF-8 text: byte b'\\xff' at column 11"):
        build_trace(dict(kind="file", path=str(bad)))
    for exc, code, line in ((ConfigError("sweep.fractions: bad"), 2, "error: sweep.fractions: bad"),
                            (KeyboardInterrupt(), 130, "interrupted: no manifest.json written")):
        def fail(exc=exc):
            raise exc
        with pytest.raises(SystemExit) as e:
            guarded(fail, (ConfigError,))
        assert e.value.code == code and line in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="a bug"):
        guarded(lambda: (_ for _ in ()).throw(RuntimeError("a bug")), (ConfigError,))


def _load_run_app():
    spec = importlib.util.spec_from_file_location("specmd_run_app", RUN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ctrl_c_while_writing_per_layer_leaves_no_table_and_no_manifest(tmp_path, monkeypatch):
    """The probe's case: Ctrl-C during per_layer.csv. No truncated table, no manifest, no claim;
    the directory is refused for a rerun instead of being mixed with new results."""
    app = _load_run_app()
    cfg = dict(trace=dict(kind="synthetic", model="olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=4),
               sweep=dict(fractions=[0.05, 0.25]), policies=["lru"], policy=None, mode="pinned",
               partitioned=False, seeds=[0], unroll_layers=False, engine="scan", progress=False,
               output_dir=str(tmp_path))
    to_csv = pd.DataFrame.to_csv

    def dies_in_per_layer(self, path, *a, **k):
        if ".per_layer.csv." in str(path):
            Path(path).write_text("\n".join(to_csv(self, None, index=False).splitlines()[:5]) + "\n")
            raise KeyboardInterrupt
        return to_csv(self, path, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_in_per_layer)
    with pytest.raises(KeyboardInterrupt):
        app.run(cfg)
    assert (tmp_path / "results.csv").is_file() and not (tmp_path / "per_layer.csv").exists()
    assert not (tmp_path / MANIFEST).exists() and _leftovers(tmp_path) == []
    with pytest.raises(OutputError, match="no manifest.json"):
        verify(tmp_path)
    monkeypatch.setattr(pd.DataFrame, "to_csv", to_csv)
    with pytest.raises(OutputError, match="interrupted or failed earlier run"):
        app.run(cfg)


# --------------------------------------------------------------------------- the apps end to end


def test_two_runs_started_together_keep_their_own_results(tmp_path):
    """Default run directories (launched from tmp_path): unique to the microsecond; a rerun into
    a directory that holds results is refused (exit 2) and leaves them intact."""
    args = [*TINY, "compilation_cache=null"]
    procs = [subprocess.Popen([sys.executable, RUN, *args, f"policies=[{p}]"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for p in ("lru", "fifo")]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    dirs = sorted(m.parent for m in tmp_path.glob(f"outputs/runs/*/*/{MANIFEST}"))
    assert len(dirs) == 2 and all(re.fullmatch(r"\d\d-\d\d-\d\d-\d{6}", d.name) for d in dirs), dirs
    assert sorted(pd.read_csv(d / "results.csv")["policy"].iloc[0] for d in dirs) == ["fifo", "lru"]
    before = verify(dirs[0])
    assert [f["name"] for f in before["files"]] == ["results.csv", "per_layer.csv", "trace.txt", "hit_rate.png",
                                                    "misses.png"]
    p = _app(RUN, [*args, "policies=[ls]", f"hydra.run.dir={dirs[0]}"])
    assert p.returncode == 2 and "already holds results of a complete earlier run" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and verify(dirs[0])["files"] == before["files"]


def test_input_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.route.csv"
    bad.write_text("# route_trace v1\nturn,phase\n1,2,3\n")
    a_file = tmp_path / "a file"
    a_file.write_text("x")
    for script, args, msg in (
            (RUN, ["trace=file", f"trace.path={tmp_path / 'absent.route.csv'}"], "absent.route.csv: no such file"),
            (PREFETCH, ["trace=file", f"trace.path={bad}", "progress=false"], "bad.route.csv:"),
            (RUN, [*TINY, f"output_dir={a_file / 'sub'}"], f"output_dir {a_file / 'sub'}: cannot create")):
        p = _app(script, [*args, f"hydra.run.dir={tmp_path / 'run'}"])
        err = p.stderr.strip().splitlines()
        assert p.returncode == 2 and "Traceback" not in p.stderr and err[-1].startswith("error: ") \
            and msg in err[-1], p.stderr
        assert "trace:" not in p.stdout  # failed before the trace was built, let alone replayed


@pytest.mark.parametrize("sig, code, note", [(signal.SIGINT, 130, "interrupted: no manifest.json written"),
                                             (signal.SIGTERM, 143, "terminated (SIGTERM): no manifest.json")],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_mid_run_exits_without_a_manifest(tmp_path, sig, code, note):
    """A signal once the app has started computing: its exit code, a one-line note, no manifest,
    no claim or temporary file left. The app starts with SIGINT ignored, as a background job of a
    non-interactive shell does (CI), and must still honour it."""
    ignore_int = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
                  "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")   # SIG_IGN survives exec
    p = subprocess.Popen([sys.executable, "-c", ignore_int, RUN, "trace.num_requests=4", "trace.gen_len=64", "progress=false",
                          "unroll_layers=false", "compilation_cache=null", f"hydra.run.dir={tmp_path}"],
                         cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in p.stdout:  # "policies: ..." is printed after the trace is built, before the replays
        if line.startswith("policies:"):
            break
    p.send_signal(sig)
    out, err = p.communicate(timeout=300)
    assert p.returncode == code and note in err and "Traceback" not in err, err
    assert not (tmp_path / MANIFEST).exists() and _leftovers(tmp_path) == []


def test_prefetch_multirun_jobs_each_complete_in_their_own_dir(tmp_path):
    p = _app(PREFETCH, ["-m", *PF_TINY, "policies=[lru],[ls]", "sweep.fractions=[0.25]",
                        f"hydra.sweep.dir={tmp_path}"])
    assert p.returncode == 0, p.stdout + p.stderr
    mans = sorted(tmp_path.glob(f"*/{MANIFEST}"))
    assert len(mans) == 2 and len({m.parent for m in mans}) == 2
    got = {verify(m.parent)["config"]["policies"][0]: pd.read_csv(m.parent / "results.csv") for m in mans}
    assert sorted(got) == ["lru", "ls"] and all(set(df["policy"]) == {k} for k, df in got.items())
    assert all(f["rows"] == 1 for m in mans for f in verify(m.parent)["files"] if f["name"] == "results.csv")


def test_multirun_job_dirs_stay_short_and_inside_the_sweep_dir(tmp_path):
    """hydra names job dirs after every override: a long list or a path in a value used to fail
    (``File name too long``) or nest / escape the sweep dir; now cut with a hash, '/' -> '_'."""
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(job_dirname(long_a).encode()) <= DIRNAME_MAX and job_dirname(long_a) != job_dirname(long_b)
    assert job_dirname("policy=lru") == "policy=lru" and job_dirname("p=../../etc") == "p=.._.._etc"
    fracs = "[" + ",".join(f"{i / 100:.2f}" for i in range(1, 41)) + "]"  # 40 capacities: a long name
    sweep = tmp_path / "sweep"
    p = _app(RUN, ["-m", *TINY, "policy=lru,fifo", f"sweep.fractions={fracs}", "score_policy=../../../escape.json",
                   f"hydra.sweep.dir={sweep}"])
    assert p.returncode == 0, p.stdout + p.stderr
    jobs = sorted(m.parent for m in tmp_path.rglob(MANIFEST))
    assert [j.parent for j in jobs] == [sweep, sweep] and [j.name[:2] for j in jobs] == ["0_", "1_"]
    assert all(len(j.name.encode()) <= 2 + DIRNAME_MAX and "score_policy=.._.._.._escape" in j.name for j in jobs)
    assert sorted(pd.read_csv(j / "results.csv")["policy"].iloc[0] for j in jobs) == ["fifo", "lru"]
    assert all(len(pd.read_csv(j / "results.csv")) == 40 and verify(j) for j in jobs)


# -------------------------------------------------------------------------------------- plots


def _sweep_table(n_caps: int) -> pd.DataFrame:
    fr = [(i + 1) / (n_caps + 1) for i in range(n_caps)]
    return pd.DataFrame([dict(policy=p, capacity_fraction=f, hit_rate=f, collision_rate=f / 2,
                              misses=100 * (1 - f), collisions=10 * (1 - f)) for p in ("lru", "ls") for f in fr])


@pytest.mark.parametrize("n_caps", [3, 1000])
def test_misses_plot_stays_bounded_and_says_what_it_shows(tmp_path, monkeypatch, n_caps):
    from matplotlib.image import imread

    from specmd_jax.study import plots
    titles, save = [], plots._save

    def keep_titles(fig, path):
        titles.extend(t.get_text() for t in [*(ax.title for ax in fig.axes), *fig.texts])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_titles)
    res = _sweep_table(n_caps)
    title = r"model (/tmp/we$ird \q$ dir), pinned"  # a $ in a trace path is text, not mathtext
    h, w = imread(plots.plot_misses(res, tmp_path / "misses.png", title)).shape[:2]
    h2, w2 = imread(plots.plot_hit_rate(res, tmp_path / "hit_rate.png", title)).shape[:2]
    assert w <= 120 * (3.2 * plots.MAX_PANELS + 1) and h <= 600 and w2 <= 900 and h2 <= 600
    assert any(plots._plain(title) in t for t in titles)
    assert any(f"all {n_caps} capacities as lines" in t for t in titles) == (n_caps > plots.MAX_PANELS)
    assert _leftovers(tmp_path) == []
