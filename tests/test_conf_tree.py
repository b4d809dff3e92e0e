"""The conf tree (``conf/``) and its structured-config schemas (``specmd_jax.config.schema``).

Every option of every group composes with its app's schema; typos and wrong types fail at
composition with hydra's message naming the key; the model group drives synthetic traces (and a
custom model works end to end); the policy group and the experiment bundles set what they say.
Composition runs in-process through hydra's compose API (fast); two subprocess runs check the
bundles end to end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from specmd_jax.config.build import ConfigError, build_trace, model_shape
from specmd_jax.config.schema import register
from specmd_jax.core.presets import MODEL_PRESETS
from specmd_jax.core.trace import ModelShape

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
APPS = {"run": "config", "prefetch": "prefetch_app"}
TINY = ["trace.num_requests=1", "trace.prompt_len=4", "trace.gen_len=4"]
register()


def _compose(app: str, overrides=(), hydra_cfg: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=APPS[app], overrides=list(overrides), return_hydra_config=hydra_cfg)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _plain(node):
    return OmegaConf.to_container(node, resolve=True, enum_to_str=True)


# ------------------------------------------------------------------ every option composes

RUN_GROUPS = ["model", "trace", "sweep", "policy"]
PREFETCH_GROUPS = RUN_GROUPS + ["hardware", "prefetch", "miss", "routing", "system"]
CASES = [("run", g, o) for g in RUN_GROUPS for o in _options(g)] + \
        [("prefetch", g, o) for g in PREFETCH_GROUPS for o in _options(g)]


def test_the_groups_exist():
    for g in PREFETCH_GROUPS + ["experiment"]:
        assert len(_options(g)) >= 2, f"conf/{g} has fewer than two options"


@pytest.mark.parametrize("app,group,option", CASES, ids=[f"{a}-{g}={o}" for a, g, o in CASES])
def test_every_option_composes(app, group, option):
    cfg = _compose(app, [f"{group}={option}"])
    if group == "policy":
        assert list(cfg.policies) and all(isinstance(p, str) for p in cfg.policies)
    elif group == "trace":
        assert cfg.trace.kind in ("synthetic", "file")
        if cfg.trace.kind == "synthetic":  # builds, in the model group's shape
            t = build_trace(_plain(_compose(app, [f"trace={option}", *TINY]).trace))
            assert t.shape.name == cfg.model.name
    elif group == "model" and option != "custom":
        assert cfg.model.name in MODEL_PRESETS
    else:
        assert cfg[group] is not None


@pytest.mark.parametrize("app,override,needle", [
    ("run", "polices=[lru]", "Key 'polices' not in 'RunSchema'"),
    ("run", "seeds=[a]", "could not be converted to Integer"),
    ("run", "mode=seq", "Invalid value 'seq', expected one of [pinned, sequential]"),
    ("run", "engine=fast", "expected one of [auto, scan, stack]"),
    ("run", "trace.skw=1", "Key 'skw' not in 'SyntheticTraceSchema'"),
    ("run", "sweep.capacities=[1.5]", "could not be converted to Integer"),
    ("run", "model.top_k=two", "could not be converted to Integer"),
    ("prefetch", "prefetch.depht=2", "Key 'depht' not in 'PrefetchSchema'"),
    ("prefetch", "miss.thresholds=[high]", "could not be converted to Float"),
    ("prefetch", "engine=scan", "expected one of [auto, jax, reference]"),
    ("prefetch", "ls_dropin=maybe", "is not a valid bool"),
    ("prefetch", "unroll_layers=true", "Key 'unroll_layers' not in 'PrefetchAppSchema'"),
    ("prefetch", "execution=experts", "expected one of [visit, expert]"),
    ("prefetch", "prefetch_issue=router", "expected one of [after_use, at_router]"),
    ("prefetch", "pin=layer", "expected one of [visit, running]"),
])
def test_typos_and_wrong_types_fail_at_composition(app, override, needle):
    with pytest.raises(Exception) as e:
        _compose(app, [override])
    text = f"{e.value}\n{e.value.__cause__}"
    assert needle in text, text


def test_a_synthetic_knob_on_a_file_trace_is_refused():
    with pytest.raises(Exception) as e:
        _compose("run", ["trace=file", "trace.skew=1"])
    assert "Key 'skew' not in 'FileTraceSchema'" in f"{e.value}\n{e.value.__cause__}"


# ------------------------------------------------------------------ model group

def test_model_group_drives_synthetic_traces_and_aliases():
    assert _compose("run").model.name == "olmoe-1b-7b"
    assert _compose("run", ["trace=synthetic_mixtral"]).model.name == "mixtral-8x7b"
    # the command line wins over an alias's default
    cfg = _compose("run", ["trace=synthetic_mixtral", "model=qwen3"])
    assert cfg.model.name == "qwen3-30b-a3b" and cfg.trace.model.name == "qwen3-30b-a3b"
    cfg = _compose("run", ["trace=calibrated", "model=mixtral"])
    assert cfg.trace.calibrated and cfg.trace.model.name == "mixtral-8x7b"
    assert _compose("prefetch", ["trace=calibrated_qwen3"]).model.name == "qwen3-30b-a3b"
    assert _compose("run", ["trace=qwen3_real"]).model.name == "qwen3-30b-a3b"  # names the file's model
    t = build_trace(_plain(_compose("run", ["trace=calibrated", "model=mixtral", *TINY]).trace))
    assert (t.shape.num_layers, t.shape.num_experts) == (32, 8)


def test_model_shape():
    assert model_shape("mixtral-8x7b") == "mixtral-8x7b"
    assert model_shape({"name": "mixtral-8x7b", "num_layers": None}) == "mixtral-8x7b"
    m = model_shape({"name": "mixtral-8x7b", "num_experts": 16})
    assert m == ModelShape("mixtral-8x7b", 32, 16, 2, MODEL_PRESETS["mixtral-8x7b"].expert_bytes)
    assert model_shape(dict(name="mine", num_layers=3, num_experts=6, top_k=2, expert_bytes=10)) == \
        ModelShape("mine", 3, 6, 2, 10)
    with pytest.raises(ConfigError, match=r"model\.num_layers is required for model 'custom'"):
        model_shape(dict(name="custom", num_layers="???", num_experts="???", top_k="???", expert_bytes="???"))
    with pytest.raises(ConfigError, match=r"model\.top_k must be an integer >= 1, got 0"):
        model_shape(dict(name="mine", num_layers=3, num_experts=6, top_k=0, expert_bytes=10))
    with pytest.raises(ConfigError, match=r"model\.top_k \(4\) must be <= model\.num_experts \(2\)"):
        model_shape(dict(name="mine", num_layers=3, num_experts=2, top_k=4, expert_bytes=10))
    with pytest.raises(ConfigError, match="was changed or is custom"):
        build_trace(dict(kind="synthetic", calibrated=True, model={"name": "mixtral-8x7b", "num_experts": 16}))


# ------------------------------------------------------------------ policy group, experiments

def test_policy_group():
    assert list(_compose("run").policies) == ["lru", "lfu", "lfu_history", "fifo", "clock", "s3fifo", "arc", "fld", "sb", "ls", "belady"]
    assert list(_compose("prefetch").policies) == ["lru", "ls"]
    assert list(_compose("run", ["policy=ls"]).policies) == ["ls"]
    assert list(_compose("run", ["policy=ls", "policies=[fifo,lru]"]).policies) == ["fifo", "lru"]
    cfg = _compose("run", ["policy=learned"])  # the group sets keys that config.yaml must not override
    assert list(cfg.policies) == ["lru", "ls", "score"] and cfg.score_policy == "outputs/tune_score/learned.json"


EXPERIMENTS = {"bigmoeonedge_curve": "run", "fig4_olmoe": "run", "fig4_qwen3": "run", "mrc": "run", "smoke": "run",
               "table2": "prefetch", "cache_aware_lam": "prefetch", "hardware_links": "prefetch", "fig6": "prefetch"}


def test_every_experiment_is_listed_here():
    assert sorted(EXPERIMENTS) == _options("experiment")


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_bundles_compose(name):
    cfg = _compose(EXPERIMENTS[name], [f"experiment={name}"], hydra_cfg=True)
    if name == "fig4_olmoe":
        assert cfg.trace.calibrated and cfg.model.name == "olmoe-1b-7b" and len(cfg.policies) == 11
        assert list(cfg.sweep.fractions) == [0.01, 0.05, 0.25]
    elif name == "bigmoeonedge_curve":
        assert cfg.convention.value == "bigmoeonedge" and cfg.sweep.budgets_mib[-1] == 8000
        assert list(cfg.policies) == ["belady", "lru", "lfu_history", "layer", "layerlfu"]
    elif name == "fig4_qwen3":
        assert cfg.trace.kind == "file" and cfg.unroll_layers is False
    elif name == "mrc":
        assert cfg.sweep.grid.num == 64 and cfg.policies[-1] == "belady"
    elif name == "smoke":
        assert cfg.trace.gen_len == 8 and list(cfg.policies) == ["lru", "ls"]
    elif name == "table2":
        assert cfg.hydra.sweeper.params.system == "eliseev23,zhu25,hobbit24,mixturecache25"
        assert cfg.system.name == "zhu25" and cfg.ls_dropin
    elif name == "cache_aware_lam":
        assert cfg.routing.policy == "cache_aware" and list(cfg.routing.lam) == [0.0, 0.1, 0.3, 0.5]
    elif name == "hardware_links":
        assert cfg.timing == "instant" and len(cfg.hardware.profiles) == 5
    elif name == "fig6":
        assert cfg.hydra.sweeper.params["prefetch.overfetch"] == "1.0,1.5,2.0" and list(cfg.policies) == ["ls"]
        assert list(cfg.sweep.fractions) == [0.05] and cfg.trace.calibrated and cfg.prefetch.selector == "topk"
    # the smoke bundle works in both apps
    _compose("prefetch", ["experiment=smoke"])


def test_an_experiment_of_the_other_app_names_the_key():
    with pytest.raises(Exception) as e:
        _compose("prefetch", ["experiment=fig4_olmoe"])
    assert "Key 'mode' not in 'PrefetchAppSchema'" in f"{e.value}\n{e.value.__cause__}"


def _app(script, args, tmp):
    p = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *args, "progress=false"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{script} {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_custom_model_and_smoke_bundle_end_to_end(tmp_path):
    _app("run.py", ["experiment=smoke", "model=custom", "model.num_layers=4", "model.num_experts=8",
                    "model.top_k=2", "model.expert_bytes=1000", f"hydra.run.dir={tmp_path}"], tmp_path)
    df = pd.read_csv(tmp_path / "results.csv")
    assert set(df["policy"]) == {"lru", "ls"} and set(df["model"]) == {"custom"}
    assert sorted(df["capacity_slots"].unique()) == [0, 1, 8]  # floor(f * 4 * 8)


def test_table2_bundle_multirun(tmp_path):
    _app("prefetch_run.py", ["-m", "experiment=table2", *TINY, "sweep.fractions=[0.05]",
                             f"hydra.sweep.dir={tmp_path}"], tmp_path)
    systems = sorted(pd.read_csv(f)["system"].iloc[0] for f in tmp_path.glob("*/results.csv"))
    assert systems == ["eliseev23", "hobbit24", "mixturecache25", "zhu25"]


# ------------------------------------------------------------------ objects from _target_

OBJECT_GROUPS = ["hardware", "prefetch", "miss", "routing", "system"]
OBJECT_CASES = [(g, o) for g in OBJECT_GROUPS for o in _options(g)]


@pytest.mark.parametrize("group,option", OBJECT_CASES, ids=[f"{g}={o}" for g, o in OBJECT_CASES])
def test_every_prefetch_group_option_builds_its_object(group, option):
    """Each option's ``_target_`` builds the library object the app hands to ``sweep``."""
    from specmd_jax.config import objects
    from specmd_jax.core.miss import MissConfig, Precision
    from specmd_jax.core.prefetch import PrefetchConfig
    from specmd_jax.core.routing import RoutingConfig
    from specmd_jax.core.timing import Hardware
    from specmd_jax.study.systems import System
    c = _compose("prefetch", [f"{group}={option}"])
    cfg = {g: _plain(c[g]) if c[g] is not None else None for g in OBJECT_GROUPS + ["precision"]}
    system = objects.system(cfg.get("system"))
    built = {"hardware": lambda: objects.hardware(cfg["hardware"]),
             "prefetch": lambda: objects.prefetch(cfg["prefetch"], system),
             "miss": lambda: objects.misses(cfg["miss"], system),
             "routing": lambda: objects.routings(cfg["routing"], system),
             "system": lambda: system}[group]()
    want = {"hardware": Hardware, "prefetch": PrefetchConfig, "miss": MissConfig, "routing": RoutingConfig,
            "system": System}[group]
    items = built if isinstance(built, list) else [built]
    assert (option == "none" and built is None) or (items and all(isinstance(x, want) for x in items)), built
    assert isinstance(objects.precision(cfg["precision"], system), Precision)


def test_vmapped_fields_expand_to_one_object_per_value_and_errors_name_the_group():
    from specmd_jax.config import objects
    c = _compose("prefetch", ["miss=drop_priority", "miss.rank_threshold=[1,2,4]", "routing=cache_aware",
                              "routing.lam=[0.0,0.5]", "precision.level_fractions=[1.0,0.5]"])
    cfg = {g: _plain(c[g]) for g in ("miss", "routing", "precision")}
    assert [m.rank_threshold for m in objects.misses(cfg["miss"])] == [1, 2, 4]
    assert [r.lam for r in objects.routings(cfg["routing"])] == [0.0, 0.5]
    assert objects.precision(cfg["precision"]).bits == (16, 8)
    c = _compose("prefetch", ["miss.percentile=200", "hardware.profiles=[warp]"])
    cfg = {g: _plain(c[g]) for g in ("miss", "hardware")}
    with pytest.raises(ConfigError, match="miss: percentile must be in"):
        objects.misses(cfg["miss"])
    with pytest.raises(ConfigError, match="hardware: unknown hardware profile 'warp'"):
        objects.hardware(cfg["hardware"])
    with pytest.raises(ConfigError, match="names no _target_"):
        objects.instantiate_each("routing", {"policy": "standard"})
