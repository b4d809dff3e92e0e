"""Hostile but fair input to the Python API: every number that enters a kernel is
range-checked or computed wide, capacities/seeds/hardware are validated once for every engine,
and each refusal names the parameter and the value."""

import dataclasses

import numpy as np
import pytest

import specmd_jax as sj
from specmd_jax.api import timed as api_timed
from specmd_jax.core import checks
from specmd_jax.core.prefetch import PrefetchConfig
from specmd_jax.core.clock import async_tick_problem
from specmd_jax.reference.demand import simulate
from specmd_jax.reference.timed import simulate_timed
from specmd_jax.core.timing import HARDWARE_PRESETS, TICK_S, Hardware

PF = PrefetchConfig(predictor="oracle")


@pytest.fixture(scope="module")
def tiny():
    return sj.synthetic.generate("olmoe-1b-7b", num_requests=1, prompt_len=8, gen_len=6, seed=0)


SLOW_LINK = Hardware(bandwidth_gbps=2.93e-5, latency_us=0.0, name="slow-link")      # one copy ~ 2**32 ticks
SLOW_LAYER = Hardware(decode_layer_us=(2 ** 32 + 500) * 0.1, name="slow-layer")    # one layer 2**32 + 500 ticks


@pytest.mark.parametrize("hw", [SLOW_LINK, SLOW_LAYER], ids=["copy", "layer"])
def test_the_async_kernel_refuses_times_past_its_int32_clock_naming_the_profile(tiny, hw):
    # before: the kernel cast the ticks to int32 and reported TTFT 868 ms (reference 1.86e8 ms)
    # or a negative stall with 0 hits
    with pytest.raises(ValueError, match=f"hardware '{hw.name}'.*int32 clock"):
        sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="jax")


@pytest.mark.parametrize("hw", [SLOW_LINK, SLOW_LAYER], ids=["copy", "layer"])
def test_auto_runs_such_settings_on_the_exact_reference(tiny, hw, monkeypatch):
    monkeypatch.setattr(api_timed, "AUTO_ASYNC_MIN_CONFIGS", 1)      # auto would pick the kernel
    a = sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="auto")
    assert set(a["engine"]) == {"reference-async"}
    for c, row in zip((16, 64), a.itertuples()):
        ref = simulate_timed(tiny, "lru", c, plan=sj.make_plan(tiny, PF), hardware=hw)
        assert row.hits == ref.totals["hits"]
        assert row.ttft_ms == pytest.approx(float(np.mean(list(ref.ttft_ticks.values()))) * TICK_S * 1e3)
    # the reference's passes really do last past 2**31 ticks (prefill or decode), so the kernel would
    # have wrapped
    assert max(a["ttft_ms"].max(), a["tpot_ms"].max()) * 1e-3 / TICK_S > 2 ** 31


def test_a_pass_past_the_clock_is_an_error_and_auto_runs_the_reference(tiny, monkeypatch):
    """Every product fits (one batch of copies < 2**31 ticks), but a pass's sum does not: the
    kernel detects the wrap and raises ClockOverflow; auto reruns on the reference."""
    from specmd_jax.core.clock import ClockOverflow
    base = HARDWARE_PRESETS["a100-5gbps"]
    hw = dataclasses.replace(base, bandwidth_gbps=tiny.shape.expert_bytes / (2 ** 23 * TICK_S) / 1e9, name="slowish")
    x = hw.transfer_ticks(tiny.shape.expert_bytes)
    assert 2 ** 22 < x < 2 ** 24                                   # ~256 copies pass 2**31 ticks
    assert async_tick_problem(tiny, [hw], None, [sj.make_plan(tiny, PF).ids]) is None
    with pytest.raises(ClockOverflow, match="a pass lasted over 2\\*\\*31 ticks"):
        sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="jax")
    monkeypatch.setattr(api_timed, "AUTO_ASYNC_MIN_CONFIGS", 1)
    a = sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="auto")
    r = sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="reference")
    assert set(a["engine"]) == {"reference-async"}
    assert a["ttft_ms"].tolist() == r["ttft_ms"].tolist() and a["ttft_ms"].max() * 1e-3 / TICK_S > 2 ** 31


def test_a_slow_link_that_fits_runs_exactly_in_the_kernel(tiny):
    """No false alarm: a link slow enough for passes of 10**8-10**9 ticks still runs in the kernel,
    equal to the reference."""
    hw = dataclasses.replace(HARDWARE_PRESETS["a100-5gbps"], bandwidth_gbps=0.05, name="slow-but-fits")
    j = sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="jax")
    r = sj.sweep_prefetch(tiny, "lru", [16, 64], prefetch=PF, hardware=[hw], engine="reference")
    assert set(j["engine"]) == {"jax-async"} and j["ttft_ms"].max() * 1e-3 / TICK_S > 10 ** 8
    for c in ("hits", "misses", "late", "stall_ms", "ttft_ms", "tpot_ms"):
        np.testing.assert_allclose(j[c].to_numpy(float), r[c].to_numpy(float), rtol=1e-12, err_msg=c)


@pytest.mark.parametrize("engine", ["reference", "jax"])
@pytest.mark.parametrize("bad, err", [([-1000], r"capacities\[0\] must be in \[0, .*got -1000"),
                                      ([8.5], r"capacities\[0\] must be a whole number, got 8.5"),
                                      ([True], r"capacities\[0\] must be a whole number"),
                                      ([], r"capacities must be a value or a non-empty list"),
                                      ([2 ** 40], r"capacities\[0\] must be in")])
def test_sweep_prefetch_refuses_the_same_capacities_on_every_engine(tiny, engine, bad, err):
    with pytest.raises((ValueError, TypeError), match=err):
        sj.sweep_prefetch(tiny, "lru", bad, prefetch=PF, engine=engine)


def test_a_whole_float_capacity_is_that_capacity(tiny):
    a = sj.sweep_prefetch(tiny, "lru", [16.0], prefetch=PF, engine="reference")
    b = sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, engine="reference")
    assert a["capacity_slots"].tolist() == [16] and a["hits"].tolist() == b["hits"].tolist()


@pytest.mark.parametrize("engine", ["auto", "scan", "stack"])
def test_sweep_refuses_capacities_it_would_mislabel(tiny, engine):
    # before: the stack path ran 2**40 slots and reported capacity_bytes -4.6e18
    with pytest.raises(ValueError, match=r"capacities\[1\] must be in .*got 1099511627776"):
        sj.sweep(tiny, "lru", [8, 2 ** 40], engine=engine)
    with pytest.raises(ValueError, match=r"capacities\[0\] must be a whole number, got 7.9"):
        sj.sweep(tiny, "lru", [7.9], engine=engine)


@pytest.mark.parametrize("bad, err", [([2 ** 32], r"seeds\[0\] must be in \[0, 4294967295\], got 4294967296"),
                                      ([-1], r"seeds\[0\] must be in"),
                                      ([1.5], r"seeds\[0\] must be a whole number, got 1.5"),
                                      ([], r"seeds must be a value or a non-empty list")])
def test_seeds_neither_alias_nor_truncate(tiny, bad, err):
    # before: seed 2**32 ran as seed 0 and 1.5 as 1, silently
    with pytest.raises(ValueError, match=err):
        sj.sweep(tiny, "random", [16], seeds=bad)


def test_the_references_check_too(tiny):
    with pytest.raises(ValueError, match="capacity must be in"):
        simulate(tiny, "lru", -1)
    with pytest.raises(ValueError, match="seed must be in"):
        simulate(tiny, "random", 8, seed=2 ** 32)
    with pytest.raises(ValueError, match="capacity must be a whole number"):
        simulate_timed(tiny, "lru", 8.25)
    with pytest.raises(ValueError, match="capacity must be in"):
        sj.simulate(tiny, "lru", -3)


def test_hardware_by_preset_name_and_empty_lists(tiny):
    by_name = sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=["a100-5gbps"], engine="reference")
    by_obj = sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=[HARDWARE_PRESETS["a100-5gbps"]],
                               engine="reference")
    assert by_name["hardware"].tolist() == ["a100-5gbps"] and by_name["ttft_ms"].equals(by_obj["ttft_ms"])
    assert simulate_timed(tiny, "lru", 16, hardware="pcie4-x16").totals == \
        simulate_timed(tiny, "lru", 16, hardware=HARDWARE_PRESETS["pcie4-x16"]).totals
    with pytest.raises(ValueError, match=r"hardware must be .* non-empty list .*got \[\]"):
        sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=[])      # before: KeyError 'setting'
    with pytest.raises(ValueError, match=r"hardware\[0\]: unknown hardware preset 'a100'.*a100-5gbps"):
        sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=["a100"])
    with pytest.raises(TypeError, match=r"hardware\[1\] must be a Hardware or a preset name, got 5"):
        sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=["a100-5gbps", 5])


@pytest.mark.parametrize("kw, err", [(dict(bandwidth_gbps="5"), "bandwidth_gbps must be a number, got '5'"),
                                     (dict(latency_us=True), "latency_us must be a number"),
                                     (dict(latency_us=1e300), r"latency_us=1e\+300 is over 2\*\*62 ticks"),
                                     (dict(expert_us=1e30), "expert_us=1e\\+30 is over 2\\*\\*62 ticks")])
def test_hardware_numbers_are_numbers_in_range(kw, err):
    with pytest.raises((TypeError, ValueError), match=err):
        Hardware(**kw)


def test_a_link_too_slow_for_int64_ticks_names_the_profile():
    h = Hardware(bandwidth_gbps=1e-300, name="glacial")
    with pytest.raises(ValueError, match=r"hardware 'glacial' \(bandwidth_gbps=1e-300.*copying 100 bytes"):
        h.transfer_ticks(100)


def test_capacity_bytes_refuses_to_wrap():
    assert checks.capacity_bytes([3], 7).tolist() == [21]
    with pytest.raises(ValueError, match="overflows int64"):
        checks.capacity_bytes([2 ** 31 - 1], 2 ** 33)


@pytest.mark.parametrize("call, exc, err", [
    (lambda t: sj.sweep(t, "lru", fractions=["0.1"]), TypeError, r"fractions\[0\] must be a number in \[0, 1\], got '0.1'"),
    (lambda t: sj.sweep(t, "lru", fractions=[float("nan")]), ValueError, r"fractions\[0\] must be in \[0, 1\], got nan"),
    (lambda t: sj.sweep(t, "lru", [[8, 16]]), ValueError, "capacities must be a value or a flat list, got a 2-D"),
    (lambda t: sj.sweep(t, "lru", [8], chunk_steps=0), ValueError, r"chunk_steps must be in \[1, "),
    (lambda t: sj.sweep("x.npz", "lru", [8]), TypeError, r"trace must be a specmd_jax Trace .*got 'x.npz' \(str\)"),
    (lambda t: sj.sweep_prefetch("x.npz", "lru", [8], prefetch=PF), TypeError, "trace must be a specmd_jax Trace"),
    (lambda t: sj.simulate(None, "lru", 8), TypeError, "trace must be a specmd_jax Trace"),
    (lambda t: sj.MissConfig(policy="drop_priority", rank_threshold=float("nan")), ValueError,
     "miss.rank_threshold must be a whole number, got nan"),
    (lambda t: sj.MissConfig(policy="drop_priority", rank_threshold=2.5), ValueError,
     "miss.rank_threshold must be a whole number, got 2.5"),
    (lambda t: sj.synthetic.generate("olmoe-1b-7b", num_requests=1, seed=1.5), ValueError,
     "seed must be a whole number, got 1.5"),
    (lambda t: sj.synthetic.generate("olmoe-1b-7b", num_requests=1, seed=-1), ValueError, r"seed must be in \[0, "),
    (lambda t: sj.synthetic.generate("olmoe-1b-7b", num_requests=10 ** 6, prompt_len=10 ** 6), ValueError,
     r"= 1000000 x 1000064 x 16 = 16001024000000 routed rows would take about .* GiB to generate"),
], ids=["fraction-str", "fraction-nan", "caps-2d", "chunk-0", "sweep-path", "sweep_prefetch-path", "simulate-none",
        "miss-nan", "miss-frac", "gen-seed-frac", "gen-seed-neg", "gen-huge"])
def test_api_probes_of_our_own(tiny, call, exc, err):
    # before: a string fraction was cast, a 2-D list flattened, chunk 0 accepted, a path string
    # gave AttributeError, NaN thresholds "cannot convert float NaN to integer", a fractional seed
    # numpy's SeedSequence error and a huge synthetic trace numpy's "array is too big"
    with pytest.raises(exc, match=err):
        call(tiny)


def test_instant_timing_refuses_sums_past_int64(tiny):
    # one copy fits in int64 ticks, but a pass of many such copies would wrap numpy's int64
    h = Hardware(bandwidth_gbps=12582912 / (2 ** 58 * TICK_S) / 1e9, latency_us=0.0, name="geologic")
    assert 2 ** 57 < h.transfer_ticks(tiny.shape.expert_bytes) < 2 ** 62
    with pytest.raises(ValueError, match=r"hardware 'geologic': the passes .* past the timing model's int64"):
        sj.sweep_prefetch(tiny, "lru", [16], prefetch=PF, hardware=[h], timing="instant")


def test_counts_past_the_kernels_int32_are_refused_or_run_on_the_reference(monkeypatch):
    """Router weights that sum past int32 units (SB keys, weight-mass counters): the kernels
    would wrap, so they refuse and engine='auto' runs the reference, which counts exactly."""
    from conftest import random_trace
    from specmd_jax.core.trace import make_trace
    t0 = random_trace(seed=4)
    heavy = make_trace(t0.shape, t0.pass_request, t0.pass_phase, t0.pass_tokens, t0.cell_offsets, t0.experts,
                       np.full(t0.experts.shape, 2.0e6, np.float32), source="heavy weights")
    assert checks.count_problem(t0) is None
    assert "summed router weight units" in checks.count_problem(heavy)
    with pytest.raises(ValueError, match="trace heavy weights: summed router weight units .* int32 counters"):
        sj.sweep(heavy, "sb", [4])
    monkeypatch.setattr(api_timed, "AUTO_ASYNC_MIN_CONFIGS", 1)
    plan = sj.make_plan(heavy, PF)
    a = sj.sweep_prefetch(heavy, "lru", [4, 9], prefetch=PF, engine="auto")
    assert set(a["engine"]) == {"reference-async"}
    for c, row in zip((4, 9), a.itertuples()):
        ref = simulate_timed(heavy, "lru", c, plan=plan, hardware=Hardware())
        assert (row.hits, row.units_full) == (ref.totals["hits"], ref.totals["units_full"])
    # pairs x bits: a shape-only stand-in for a 2**28-row, top-8 trace (no memory behind it)
    import types
    big = types.SimpleNamespace(experts=np.broadcast_to(np.int16(0), (2 ** 28, 8)), shape=t0.shape,
                                weights=None, source="big")
    assert "routed pairs x bits served per pair" in checks.count_problem(big)
