"""Trace I/O: npz round trip, validation errors (npz, route_trace CSV, JSONL) and the real traces."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from conftest import EXCERPT, REAL

from specmd_jax.core.presets import MODEL_PRESETS, get_model_preset
from specmd_jax.core.readers import load_trace, read_expert_jsonl, read_route_trace_csv
from specmd_jax.core.synthetic import generate
from specmd_jax.core.npz import load_npz, save_trace
from specmd_jax.core.trace import DECODE, PREFILL, Trace, TraceError

QWEN_CSV = "bigmoeonedge-route-trace/qwen.route.csv"
MIXTRAL_JSONL = "mixtral8x7b-speculative-moe/routing_data_collected/gsm8k_2_routing.jsonl"


def assert_same(a: Trace, b: Trace) -> None:
    assert a.shape == b.shape
    for f in ("pass_request", "pass_phase", "pass_tokens", "cell_offsets", "experts"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and np.array_equal(x, y), f
    assert (a.weights is None) == (b.weights is None)
    if a.weights is not None:
        assert a.weights.dtype == b.weights.dtype and np.array_equal(a.weights, b.weights)
    assert a.notes == b.notes and a.source == b.source


def assert_names(err: pytest.ExceptionInfo, path, field: str, value: str) -> None:
    msg = str(err.value)
    assert str(path) in msg, msg
    assert f"'{field}'" in msg, msg
    assert value in msg, msg


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize("with_weights", [True, False])
def test_npz_round_trip(tmp_path, with_weights):
    t = generate("mixtral-8x7b", num_requests=2, prompt_len=5, gen_len=7, seed=3, with_weights=with_weights)
    p = tmp_path / "sub" / "t.npz"
    save_trace(t, str(p))
    u = load_npz(str(p))
    assert_same(t, u)
    assert_same(t, load_trace(p))
    assert u.has_weights == with_weights


def _good_arrays():
    """L=2, E=4, K=2: pass 0 prefill of 2 tokens, pass 1 decode of 1 token."""
    return dict(pass_request=np.array([0, 0], np.int32), pass_phase=np.array([PREFILL, DECODE], np.int8),
                pass_tokens=np.array([2, 1], np.int32), cell_offsets=np.array([0, 2, 4, 5, 6], np.int64),
                experts=np.array([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3]], np.int16),
                weights=np.full((6, 2), 0.5, np.float32))


def _write_npz(path, version=1, shape=None, **arrays):
    meta = {"format_version": version, "source": "hand", "notes": [], "has_weights": "weights" in arrays,
            "shape": {"name": "tiny", "num_layers": 2, "num_experts": 4, "top_k": 2, "expert_bytes": 100,
                      **(shape or {})}}
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


def test_npz_hand_written_good(tmp_path):
    t = load_npz(str(_write_npz(tmp_path / "ok.npz", **_good_arrays())))
    assert t.num_passes == 2 and t.experts.shape == (6, 2)
    e, w = t.cell_rows(1, 1)
    assert e.tolist() == [[1, 3]] and w.shape == (1, 2)


def _bad(kind):
    a = _good_arrays()
    if kind == "expert_ge_E":
        a["experts"][3, 1] = 4
        return a, "experts", "4"
    if kind == "expert_wraps_int16":
        a["experts"] = a["experts"].astype(np.int64)
        a["experts"][0, 0] = 65536 + 1  # would wrap to id 1 if cast blindly
        return a, "experts", "65537"
    if kind == "duplicate":
        a["experts"][2] = [1, 1]
        return a, "experts", "[1, 1]"
    if kind == "wrong_K":
        a["experts"] = np.array([[0, 1, 2]] * 6, np.int16)
        a["weights"] = np.full((6, 3), 0.3, np.float32)
        return a, "experts", "(6, 3)"
    if kind == "negative_weight":
        a["weights"][1, 0] = -0.5
        return a, "weights", "-0.5"
    if kind == "nan_weight":
        a["weights"][4, 1] = np.nan
        return a, "weights", "nan"
    if kind == "empty":
        a.update(cell_offsets=np.zeros(5, np.int64), experts=np.zeros((0, 2), np.int16),
                 weights=np.zeros((0, 2), np.float32))
        return a, "experts", "empty"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["expert_ge_E", "expert_wraps_int16", "duplicate", "wrong_K",
                                  "negative_weight", "nan_weight", "empty"])
def test_npz_bad(tmp_path, kind):
    arrays, field, value = _bad(kind)
    p = _write_npz(tmp_path / f"{kind}.npz", **arrays)
    with pytest.raises(TraceError) as e:
        load_npz(str(p))
    assert_names(e, p, field, value)


def test_npz_layer_bytes_round_trip(tmp_path):
    """Per-layer expert bytes (format v4) survive save and load; v1-v3 files have none."""
    t = load_npz(str(_write_npz(tmp_path / "v4.npz", version=4, shape={"layer_bytes": [60, 100]},
                                **_good_arrays())))
    assert t.shape.layer_bytes == (60, 100) and t.shape.bytes_per_layer == (60, 100)
    save_trace(t, tmp_path / "again.npz")
    assert load_npz(str(tmp_path / "again.npz")).shape == t.shape
    plain = load_npz(str(_write_npz(tmp_path / "v3.npz", version=3, **_good_arrays())))
    assert plain.shape.layer_bytes is None and plain.shape.bytes_per_layer == (100, 100)


@pytest.mark.parametrize("lb, field, value", [([100], "shape.layer_bytes", "(100,)"),
                                              ([100, "x"], "shape.layer_bytes[1]", "'x'"),
                                              ([100, 0], "shape.layer_bytes[1]", "0"),
                                              ([100, 1.5], "shape.layer_bytes[1]", "1.5"),
                                              ([50, 60], "shape.expert_bytes", "60"),
                                              ("ab", "shape.layer_bytes", "'ab'")])
def test_npz_bad_layer_bytes(tmp_path, lb, field, value):
    p = _write_npz(tmp_path / "bad.npz", version=4, shape={"layer_bytes": lb}, **_good_arrays())
    with pytest.raises(TraceError) as e:
        load_npz(str(p))
    assert_names(e, p, field, value)


def test_npz_unknown_version(tmp_path):
    p = _write_npz(tmp_path / "v99.npz", version=99, **_good_arrays())
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert_names(e, p, "format_version", "99")


def test_load_trace_missing_and_unknown_suffix(tmp_path):
    with pytest.raises(TraceError, match="no such file") as e:
        load_trace(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(e.value)
    p = tmp_path / "t.parquet"
    p.write_text("x")
    with pytest.raises(TraceError, match="unknown trace format") as e:
        load_trace(p)
    assert str(p) in str(e.value)


# --------------------------------------------------------------------------- route_trace CSV

CSV_PRE = """# route_trace v1
# model=/x/Tiny-Q4.gguf arch=tiny n_layer=2 n_expert=4 n_expert_used=2
# layer=0 expert_bytes=100 dense_bytes=1
# layer=1 expert_bytes=120 dense_bytes=1
turn,phase,step,layer,slot,expert,weight,residency,expert_bytes
"""


def _csv_rows():
    """Prefill steps 0,1 (layer 1 routes only step 1); decode steps 2, 3; all layers."""
    cells = [(0, 0, 0, [0, 1]), (1, 0, 0, [1, 0]), (1, 1, 0, [2, 3]),
             (2, 0, 1, [3, 2]), (2, 1, 1, [0, 2]), (3, 0, 1, [1, 2]), (3, 1, 1, [3, 0])]
    rows = []
    for step, layer, phase, ex in cells:
        for slot, e in enumerate(ex):
            rows.append([0, phase, step, layer, slot, e, 0.6 if slot == 0 else 0.4, 0, 0])
    return rows


def _write_csv(path, rows, pre=CSV_PRE):
    path.write_text(pre + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_csv_small_good(tmp_path):
    rows = _csv_rows()
    rows = rows[6:] + rows[:6]  # file order does not matter
    t = read_route_trace_csv(_write_csv(tmp_path / "ok.csv", rows))
    assert (t.shape.num_layers, t.shape.num_experts, t.shape.top_k) == (2, 4, 2)
    assert t.shape.expert_bytes == 120 and t.shape.name == "Tiny-Q4"
    assert t.shape.layer_bytes == (100, 120) == t.shape.bytes_per_layer     # per layer, max as expert_bytes
    assert t.pass_phase.tolist() == [PREFILL, DECODE, DECODE]
    assert t.pass_tokens.tolist() == [2, 1, 1] and t.pass_request.tolist() == [0, 0, 0]
    assert t.cell_rows(0, 0)[0].tolist() == [[0, 1], [1, 0]]   # step order
    assert t.cell_rows(0, 1)[0].tolist() == [[2, 3]]
    assert t.cell_rows(2, 1)[0].tolist() == [[3, 0]]
    assert np.allclose(t.weights.sum(1), 1.0)
    notes = " | ".join(t.notes)
    assert "layer 1 routes 1 of 2 prompt tokens" in notes and "last prompt token" in notes
    assert "expert_bytes differs" in notes and "n_expert_used" in notes


def _csv_case(tmp_path, kind):
    rows, pre = _csv_rows(), CSV_PRE
    # row i of rows is on file line 6 + i
    if kind == "no_version":
        pre = pre.split("\n", 1)[1]
        return rows, pre, 1, "version", "model="
    if kind == "unknown_version":
        pre = pre.replace("v1", "v2", 1)
        return rows, pre, 1, "version", "v2"
    if kind == "missing_header_field":
        pre = pre.replace(" n_expert=4", "")
        return rows, pre, 2, "n_expert", "None"
    if kind == "non_integer":
        rows[3][5] = "x3"
        return rows, pre, 9, "expert", "x3"
    if kind == "expert_ge_E":
        rows[4][5] = 4
        return rows, pre, 10, "expert", "4"
    if kind == "slot_ge_K":
        rows[1][4] = 2
        return rows, pre, 7, "slot", "2"
    if kind == "duplicate_slot":
        rows[1][4] = 0
        return rows, pre, 7, "slot", "0"
    if kind == "missing_slot":
        del rows[1]
        return rows, pre, 6, "slot", "[0]"
    if kind == "duplicate_expert":
        rows[1][5] = rows[0][5]
        return rows, pre, 7, "expert", "0"
    if kind == "negative_weight":
        rows[2][6] = -0.1
        return rows, pre, 8, "weight", "-0.1"
    if kind == "nan_weight":
        rows[2][6] = "nan"
        return rows, pre, 8, "weight", "nan"
    if kind == "no_rows":
        return [], pre, 5, "rows", "0"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["no_version", "unknown_version", "missing_header_field", "non_integer",
                                  "expert_ge_E", "slot_ge_K", "duplicate_slot", "missing_slot",
                                  "duplicate_expert", "negative_weight", "nan_weight", "no_rows"])
def test_csv_bad(tmp_path, kind):
    rows, pre, line, field, value = _csv_case(tmp_path, kind)
    p = _write_csv(tmp_path / f"{kind}.csv", rows, pre)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert_names(e, p, field, value)
    assert f"{p}:{line}:" in str(e.value)


# --------------------------------------------------------------------------- JSONL


def _jsonl_recs():
    recs = []
    for layer in range(2):
        for tok in range(3):
            recs.append({"dataset": "d", "problem_id": 0, "layer": layer, "experts": [tok % 8, (tok + 1 + layer) % 8],
                         "gating_probs": [0.7, 0.3], "token_idx": tok})
    return recs


def _write_jsonl(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in recs))
    return path


def test_jsonl_small_good_with_gap(tmp_path):
    recs = _jsonl_recs()
    del recs[5]                        # layer 1 lost its last row
    t = read_expert_jsonl(_write_jsonl(tmp_path / "ok.jsonl", recs))
    assert (t.shape.num_layers, t.shape.num_experts, t.shape.top_k) == (2, 8, 2)
    assert t.shape.expert_bytes == get_model_preset("mixtral-8x7b").expert_bytes
    assert t.num_passes == 3 and set(t.pass_phase.tolist()) == {DECODE} and t.pass_tokens.tolist() == [1, 1, 1]
    assert t.experts.shape[0] == 5                # no invented rows
    assert t.cell_rows(2, 1)[0].shape == (0, 2)   # the missing cell stays empty
    assert t.cell_rows(2, 0)[0].tolist() == [[2, 3]]
    notes = " | ".join(t.notes)
    assert "min 2 max 3" in notes and "1 empty cells" in notes and "renumbered" in notes
    assert "preset" in notes
    # an explicit preset fixes L
    assert read_expert_jsonl(tmp_path / "ok.jsonl", model="mixtral-8x7b").shape.num_layers == 32


def _jsonl_case(kind):
    recs = _jsonl_recs()   # record i on line i + 1
    if kind == "bad_json":
        recs[2] = '{"problem_id": 0, '
        return recs, 3, "json", "problem_id"
    if kind == "missing_field":
        del recs[1]["gating_probs"]
        return recs, 2, "gating_probs", "None"
    if kind == "expert_ge_E":
        recs[3]["experts"] = [1, 8]
        return recs, 4, "experts", "8"
    if kind == "duplicate_ids":
        recs[4]["experts"] = [3, 3]
        return recs, 5, "experts", "[3, 3]"
    if kind == "wrong_K":
        recs[1]["experts"] = [1, 2, 3]
        recs[1]["gating_probs"] = [0.5, 0.3, 0.2]
        return recs, 2, "experts", "[1, 2, 3]"
    if kind == "probs_len":
        recs[2]["gating_probs"] = [1.0]
        return recs, 3, "gating_probs", "[1.0]"
    if kind == "negative_prob":
        recs[0]["gating_probs"] = [1.2, -0.2]
        return recs, 1, "gating_probs", "-0.2"
    if kind == "nan_prob":
        recs[0]["gating_probs"] = [float("nan"), 0.5]   # json.dumps writes NaN
        return recs, 1, "gating_probs", "nan"
    if kind == "duplicate_key":
        recs[4]["token_idx"] = 0
        return recs, 5, "token_idx", "0"
    if kind == "empty":
        return [], 0, "rows", "0"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["bad_json", "missing_field", "expert_ge_E", "duplicate_ids", "wrong_K",
                                  "probs_len", "negative_prob", "nan_prob", "duplicate_key", "empty"])
def test_jsonl_bad(tmp_path, kind):
    recs, line, field, value = _jsonl_case(kind)
    p = _write_jsonl(tmp_path / f"{kind}.jsonl", recs)
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert_names(e, p, field, value)
    assert f"{p}:{line}:" in str(e.value)


def test_presets():
    assert set(MODEL_PRESETS) == {"olmoe-1b-7b", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "phi-3.5-moe", "qwen3-30b-a3b"}
    assert get_model_preset("qwen3-30b-a3b").expert_bytes == 9437184
    with pytest.raises(ValueError, match="olmoe-1b-7b"):
        get_model_preset("gpt-5")


# --------------------------------------------------------------------------- real traces


@pytest.mark.parametrize("name", ["excerpt", pytest.param("full", marks=REAL)])
def test_real_qwen_route_trace(request, name, tmp_path):
    """The real Qwen3 route trace: the committed excerpt (prefill + 16 decode steps) everywhere,
    the whole trace (128 decode steps) where ../shared/traces is present."""
    p = EXCERPT if name == "excerpt" else request.getfixturevalue("traces_dir") / QWEN_CSV
    n_decode = 16 if name == "excerpt" else 128
    data_rows = sum(1 for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith(("#", "turn,")))
    assert data_rows == 28 * 47 * 6 + 6 + n_decode * 48 * 6        # 12,510 / 44,766 (README of the traces)
    t = load_trace(p)
    s = t.shape
    assert (s.num_layers, s.num_experts, s.top_k) == (48, 128, 6)
    assert t.experts.size == data_rows                          # nothing dropped
    assert np.sum(t.pass_phase == PREFILL) == 1 and t.pass_phase[0] == PREFILL and t.pass_tokens[0] == 28
    assert np.sum(t.pass_phase == DECODE) == n_decode and np.all(t.pass_tokens[1:] == 1)
    rows = np.diff(t.cell_offsets).reshape(t.num_passes, 48)
    assert np.all(rows[0, :47] == 28) and rows[0, 47] == 1 and np.all(rows[1:] == 1)
    assert any("layer 47 routes 1 of 28 prompt tokens" in n for n in t.notes)
    lb = t.shape.layer_bytes                                    # the preamble's per-layer bytes, kept
    assert len(lb) == 48 and set(lb) == {3059712, 2654208} and lb[:8] == (3059712,) * 6 + (2654208,) * 2
    assert np.allclose(t.weights.sum(1), 1.0, atol=1e-4)
    save_trace(t, str(tmp_path / "q.npz"))
    assert_same(t, load_npz(str(tmp_path / "q.npz")))


def test_real_mixtral_jsonl(traces_dir):
    p = traces_dir / MIXTRAL_JSONL
    records = sum(1 for ln in p.read_text().splitlines() if ln.strip())
    assert records == 7_889
    t = load_trace(p)
    s = t.shape
    assert (s.num_layers, s.num_experts, s.top_k) == (32, 8, 2)
    assert len(np.unique(t.pass_request)) == 2 and np.all(t.pass_phase == DECODE)
    assert t.experts.shape[0] == records
    counts = np.diff(t.cell_offsets)
    assert counts.max() == 1 and np.count_nonzero(counts) == records   # no invented rows
    assert t.num_passes == 168 + 79
    notes = " | ".join(t.notes)
    assert "miss rows" in notes and "empty" in notes and "renumbered" in notes


def test_trace_is_frozen():
    t = generate("mixtral-8x7b", num_requests=1, prompt_len=0, gen_len=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.source = "x"
