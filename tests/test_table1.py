"""experiments/table1.py (the paper's Table 1 shape) on its quick setting: every model x policy
tuple x capacity row, sane rates and proxies, the baseline as the speed-up reference, the
paper's numbers beside ours, and the Pareto plot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def test_table1_quick(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / "table1.py"), "--quick", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    res = pd.read_csv(tmp_path / "table1.csv")
    assert len(res) == 2 * 6 * 3 and set(res["model"]) == {"olmoe-1b-7b", "mixtral-8x7b"}
    assert set(res["config"]) == {"baseline", "eliseev23", "zhu25", "hobbit24", "mixturecache25", "specmd"}
    for c in ("hit_rate", "collision_rate", "proxy_served_as_routed", "proxy_mass_full_precision",
              "proxy_mass_dropped", "proxy_mass_substituted", "proxy_mass_rerouted"):
        assert res[c].between(0, 1).all(), c
    assert np.allclose(res.loc[res["config"] == "baseline", "ttft_speedup"], 1.0)
    by = res.set_index(["model", "config", "capacity_fraction"])
    # each tuple's own dimension shows in its proxies
    assert (by.xs("zhu25", level=1)["proxy_mass_dropped"] + by.xs("zhu25", level=1)["proxy_mass_substituted"] > 0).all()
    assert (by.xs("hobbit24", level=1)["proxy_mean_bits"] < 4).all()
    assert (by.xs("eliseev23", level=1)["proxy_mass_full_precision"] == 1).all()
    assert set(by.xs("mixturecache25", level=1)["routing"]) == {"cache_aware(lam=0.3)"}
    assert res.loc[res["model"] == "olmoe-1b-7b", "paper_ttft_ms"].notna().all()
    md = (tmp_path / "table1.md").read_text()
    assert md.count("\n| ") == 1 + 2 * 6 and "proxies, not accuracy" in md
    assert (tmp_path / "table1_pareto.png").read_bytes()[:4] == b"\x89PNG"
