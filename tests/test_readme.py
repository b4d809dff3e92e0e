"""The Python examples of the README and docs/ run as written (they are documentation users copy)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _run_block(path: Path, i: int, tmp_path, monkeypatch) -> dict:
    """Execute the ``i``-th fenced Python block of ``path`` in ``tmp_path``; its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) > i, f"{path.name} lost its Python example {i}"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[i], path.name, "exec"), ns)  # noqa: S102 - our own documentation
    return ns


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    ns = _run_block(README, 0, tmp_path, monkeypatch)
    df, big, mrc = ns["df"], ns["big"], ns["mrc"]
    assert len(df) == 3 and df["hit_rate"].between(0, 1).all()
    assert len(big) == 64 * 3 and set(big["seed"]) == {0, 1, 2}
    assert mrc["capacity_slots"].tolist() == list(range(1025))
    assert (tmp_path / "my_trace.npz").exists()
    assert "ls" in capsys.readouterr().out


def test_readme_prefetch_example_runs(tmp_path, monkeypatch):
    ns = _run_block(README, 1, tmp_path, monkeypatch)
    fast, slow = ns["fast"], ns["slow"]
    assert len(fast) == len(slow) == 4
    assert set(fast["engine"]) == {"jax-instant"} and set(slow["engine"]) == {"reference-async"}
    assert (slow["late"] > 0).any() and (fast["late"] == 0).all()


def test_docs_readings_example_runs(tmp_path, monkeypatch):
    """docs/readings.md's Python example runs as written: the default reading, the whole-visit
    reading by label, and every reading in one call, each row labelled."""
    ns = _run_block(README.parent / "docs" / "readings.md", 0, tmp_path, monkeypatch)
    df, old, every = ns["df"], ns["old"], ns["every"]
    assert set(df["reading"]) == {"expert/at_router/running"} and set(old["reading"]) == {"visit/after_use/visit"}
    assert every["reading"].nunique() == 6 and every["below_token_cycle"].all()


# (file relative to the repository, block index) -> the test above that runs it with assertions
COVERED = {("README.md", 0), ("README.md", 1), ("docs/readings.md", 0), ("docs/conventions.md", 0)}


def test_conventions_example_runs(traces_dir, tmp_path, monkeypatch):
    """docs/conventions.md's example needs the real Qwen3 trace (skips on a lone clone)."""
    monkeypatch.setenv("SPECMD_TRACES", str(traces_dir))
    ns = _run_block(README.parent / "docs" / "conventions.md", 0, tmp_path, monkeypatch)
    curve, df = ns["curve"], ns["df"]
    assert len(curve) == 6 * 5 and list(curve["peer_policy"][:5]) == ["belady", "lru", "lfu", "layer", "layerlfu"]
    lru1000 = curve[(curve["budget_mib"] == 1000) & (curve["peer_policy"] == "lru")]
    assert round(float(lru1000["hit_pct_cum"].iloc[0]), 3) == 35.141       # BigMoeOnEdge's published cell
    assert len(df) == 2 and df["partitioned"].all()


def _blocks():
    root = README.parent
    for path in [README, *sorted((root / "docs").glob("*.md"))]:
        n = len(re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S))
        for i in range(n):
            yield path.relative_to(root).as_posix(), i


def test_every_python_block_in_the_docs_is_run(tmp_path, monkeypatch):
    """Every fenced Python block in the README and docs/ executes: the ones the tests above check
    with assertions, and any other here (so no example can rot unseen)."""
    blocks = list(_blocks())
    assert COVERED <= set(blocks), f"a covered block moved: {sorted(COVERED - set(blocks))}"
    for name, i in blocks:
        if (name, i) not in COVERED:
            _run_block(README.parent / name, i, tmp_path, monkeypatch)


def test_every_relative_link_in_the_docs_resolves():
    """README and docs/ link files by relative path; each must exist (after the README split)."""
    root = README.parent
    bad = []
    for path in [README, *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (path.parent / target).exists():
                bad.append(f"{path.relative_to(root)}: {target}")
    assert not bad, bad
