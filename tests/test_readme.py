"""The README's Python API example runs as written (it is documentation users copy)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python example"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    df, big, mrc = ns["df"], ns["big"], ns["mrc"]
    assert len(df) == 3 and df["hit_rate"].between(0, 1).all()
    assert len(big) == 64 * 3 and set(big["seed"]) == {0, 1, 2}
    assert mrc["capacity_slots"].tolist() == list(range(1025))
    assert (tmp_path / "my_trace.npz").exists()
    assert "ls" in capsys.readouterr().out


def test_readme_prefetch_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 2, "README lost its prefetch example"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[1], "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    fast, slow = ns["fast"], ns["slow"]
    assert len(fast) == len(slow) == 4
    assert set(fast["engine"]) == {"jax-instant"} and set(slow["engine"]) == {"reference-async"}
    assert (slow["late"] > 0).any() and (fast["late"] == 0).all()


def test_docs_readings_example_runs(tmp_path, monkeypatch):
    """docs/readings.md's Python example runs as written: the default reading, the whole-visit
    reading by label, and every reading in one call, each row labelled."""
    doc = Path(__file__).resolve().parents[1] / "docs" / "readings.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "docs/readings.md lost its example"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(blocks[0], "docs/readings.md", "exec"), ns)  # noqa: S102 - our own documentation
    df, old, every = ns["df"], ns["old"], ns["every"]
    assert set(df["reading"]) == {"expert/at_router/running"} and set(old["reading"]) == {"visit/after_use/visit"}
    assert every["reading"].nunique() == 6 and every["below_token_cycle"].all()
