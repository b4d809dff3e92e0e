"""Record the timed reference's numbers under the execution reading every earlier release used
(``execution=visit, prefetch_issue=after_use, pin=visit``), so that a later reference can be
checked to reproduce them bit for bit (``tests/test_readings.py``).

    python tests/data/make_timed_baseline.py   # writes tests/data/timed_baseline.csv

The committed CSV was produced by the reference at the commit named in its first line, before
the execution readings existed; regenerate it only on purpose (it is a regression fixture).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE.parent))

from conftest import random_trace  # noqa: E402
from specmd_jax.core import synthetic  # noqa: E402
from specmd_jax.core.miss import MissConfig, Precision  # noqa: E402
from specmd_jax.core.prefetch import PrefetchConfig, make_plan  # noqa: E402
from specmd_jax.core.counters import TIMED_COUNTERS as COUNTERS
from specmd_jax.reference.timed import simulate_timed  # noqa: E402
from specmd_jax.core.routing import RoutingConfig  # noqa: E402
from specmd_jax.core.timing import INSTANT, Hardware  # noqa: E402

SLOW = Hardware(bandwidth_gbps=0.5, latency_us=20.0, decode_layer_us=100.0, name="slow")
FAST = Hardware(bandwidth_gbps=8.0, latency_us=5.0, decode_layer_us=150.0, name="fast")
HARDWARE = {"instant": INSTANT, "slow": SLOW, "fast": FAST}
TWO_LEVELS = Precision(levels=(("fp16", 16), ("int4", 4)))


def cases():
    """Yield ``(name, trace, kwargs)`` for every recorded configuration."""
    traces = {f"random{s}": random_trace(L=3, E=6, K=2, P=10, max_tokens=3, seed=s) for s in range(3)}
    traces["olmoe"] = synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=4, gen_len=6, seed=3,
                                         pred_noise=1.0)
    for tname, t in traces.items():
        plans = {"none": None,
                 "oracle": make_plan(t, PrefetchConfig("oracle", "topk", overfetch=1.5)),
                 "degraded_d2": make_plan(t, PrefetchConfig("oracle_degraded", "all", recall=0.8, precision=0.8,
                                                            depth=2, seed=1))}
        caps = (1, 3, 7, 12) if tname != "olmoe" else (10, 51, 200)
        for pname, plan in plans.items():
            for hname, hw in HARDWARE.items():
                for inst in (False, True):
                    if inst and pname == "none":
                        continue
                    for pol in ("lru", "ls", "fifo", "lfu", "belady", "sb", "fld", "random"):
                        for c in caps:
                            yield (tname, pname, hname, inst, pol, c, "fetch", "plain", "standard"), t, dict(
                                policy=pol, capacity=c, plan=plan, hardware=hw, instant_prefetch=inst, seed=1)
        # the other dimensions, on one plan and link
        plan = plans["degraded_d2"]
        for c in caps:
            for mname, m in {"drop2": MissConfig("drop_priority", rank_threshold=1),
                             "substitute": MissConfig("substitute")}.items():
                for pol in ("lru", "ls", "fifo"):
                    yield (tname, "degraded_d2", "slow", False, pol, c, mname, "plain", "standard"), t, dict(
                        policy=pol, capacity=c, plan=plan, hardware=SLOW, miss=m, seed=1)
            for pol in ("lru", "ls", "lhu"):
                yield (tname, "degraded_d2", "slow", False, pol, 4 * c, "cascade", "two", "standard"), t, dict(
                    policy=pol, capacity=4 * c, plan=plan, hardware=SLOW, precision=TWO_LEVELS,
                    miss=MissConfig("cascade", thresholds=(0.3,)), seed=1)
            for pol in ("lru", "ls"):
                yield (tname, "degraded_d2", "fast", False, pol, c, "fetch", "plain", "cache_aware"), t, dict(
                    policy=pol, capacity=c, plan=plan, hardware=FAST, routing=RoutingConfig("cache_aware", lam=0.5),
                    seed=1)


def digest(r) -> dict:
    out = {k: r.totals[k] for k in COUNTERS}
    h = hashlib.sha256()
    h.update(repr((r.per_layer, r.resident, r.max_occupancy, r.pass_ticks, sorted(r.ttft_ticks.items()),
                   r.transfer_ticks)).encode())
    out["state_sha"] = h.hexdigest()[:16]
    return out


KEYS = ("trace", "plan", "hardware", "instant", "policy", "capacity", "miss", "precision", "routing")


def main():
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=HERE).stdout.strip()
    lines = [f"# timed reference baseline, commit {rev}, reading visit/after_use/visit",
             ",".join(KEYS + COUNTERS + ("state_sha",))]
    for key, t, kw in cases():
        pol = kw.pop("policy")
        d = digest(simulate_timed(t, pol, **kw))
        lines.append(",".join(str(v) for v in key) + "," + ",".join(str(d[k]) for k in COUNTERS + ("state_sha",)))
    (HERE / "timed_baseline.csv").write_text("\n".join(lines) + "\n")
    print(f"{len(lines) - 2} configurations -> {HERE / 'timed_baseline.csv'}")


if __name__ == "__main__":
    main()
