"""Tune the parametric eviction score with optax on the soft relaxation.

The loss of one weight vector is the mean, over training traces and cache sizes, of the
relaxation's expected demand-miss rate (:func:`specmd_jax.learn.soft.soft_run`). Random restarts x
learning rates are one vmapped axis of *members*; a whole block of ``steps_per_eval`` optimizer
steps is one jitted ``lax.scan`` (compiled once for the run). After each block every member's
weights are quantised (:func:`specmd_jax.core.score.quantize`) and evaluated with the **hard**
simulator (:mod:`specmd_jax.run.keyed`) on validation traces; each member keeps its best
validation weights, and tuning stops when no member improved for ``patience`` blocks (or after
``max_blocks``). The winner is the member with the best hard validation miss rate, returned as
a named :class:`~specmd_jax.core.score.ScorePolicy` (save/load as JSON; usable from Python and from
``experiments/run.py`` via ``policies=[score] score_policy=<file>``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from specmd_jax.core.capacity import capacity_slots
from specmd_jax.run.keyed import run_scores
from specmd_jax.core.score import DEMAND_FEATURES, FEATURES, NF, ScorePolicy, bounds_of, quantize
from specmd_jax.learn.soft import SoftParams, soft_run, soft_steps
from specmd_jax.core.trace import Trace
from specmd_jax.core.steps import prepare_steps


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """Numbers of a tuning run.

    Attributes:
        fractions: cache sizes (fractions of all expert bytes) in the loss and the validation.
        restarts: random initial weight vectors per learning rate (restart 0 starts at LRU).
        learning_rates: Adam learning rates; members = restarts x learning rates (one vmapped axis).
        init_scale: standard deviation of the random part of the initial weights.
        tau: soft-eviction temperature (normalised score units).
        iters: bisection iterations of the eviction threshold.
        chunk: visits per rematerialised chunk of the soft scan.
        steps_per_eval: optimizer steps per jitted block between validations.
        max_blocks: most blocks; patience: blocks without any member improving before stopping.
        seed: seed of the initial weights.
    """

    fractions: tuple = (0.01, 0.05, 0.25)
    restarts: int = 3
    learning_rates: tuple = (0.05, 0.2)
    init_scale: float = 0.5
    tau: float = 0.1
    iters: int = 16
    chunk: int = 64
    steps_per_eval: int = 8
    max_blocks: int = 10
    patience: int = 3
    seed: int = 0


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        policy: the best member's best weights as a named policy.
        history: one dict per block: ``block``, ``step``, ``train_loss`` (float[M], soft),
            ``val_miss_rate`` (float[M], hard), ``seconds``.
        members: ``(restart, learning_rate)`` per member.
        best_member: index of the winner; best_val: its hard validation miss rate.
        best_weights: float[M, NF] each member's best-validation weights.
        compiles: number of distinct compilations of the training block (1 when shapes are fixed).
    """

    policy: ScorePolicy
    history: list
    members: list
    best_member: int
    best_val: float
    best_weights: np.ndarray
    compiles: int


def _stack_steps(traces: Sequence[Trace], chunk: int):
    """Soft steps of traces of one model shape, padded to a common width and length, stacked."""
    shape = traces[0].shape
    for t in traces:
        if (t.shape.num_layers, t.shape.num_experts) != (shape.num_layers, shape.num_experts):
            raise ValueError(f"training traces must share L and E: {t.source} is {t.shape}, the first is {shape}")
    sts = [prepare_steps(t, "pinned") for t in traces]
    W = max(s.width for s in sts)
    S = max(s.num_steps for s in sts)
    xs = [soft_steps(t, chunk, steps=st, width=W, num_steps=S) for t, st in zip(traces, sts)]
    demands = np.array([s.num_demands for s in sts], np.float32)
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *xs), demands


def make_loss(traces: Sequence[Trace], cfg: TuneConfig) -> Callable:
    """``loss(w) -> float32``: mean soft miss rate over ``traces`` x ``cfg.fractions``.

    Traces are grouped by model shape (L, E); each group is one stacked, vmapped soft replay,
    so the weights can be tuned on several models at once (they act on normalised features)."""
    groups: dict = {}
    for t in traces:
        groups.setdefault((t.shape.num_layers, t.shape.num_experts), []).append(t)
    parts = []
    for (L, E), ts in groups.items():
        xs, demands = _stack_steps(ts, cfg.chunk)
        parts.append((L, E, xs, jnp.asarray(demands), jnp.asarray([f * L * E for f in cfg.fractions], jnp.float32)))

    def loss(w):
        tot = 0.0
        for L, E, xs, dem, caps in parts:
            def one(x, d, c, L=L, E=E):
                prm = SoftParams(w=w, capacity=c, tau=jnp.float32(cfg.tau))
                return soft_run(x, prm, L, E, iters=cfg.iters, chunk=cfg.chunk)["misses"] / d
            per = jax.vmap(lambda x, d: jax.vmap(lambda c: one(x, d, c))(caps))(xs, dem)
            tot = tot + jnp.sum(per)
        return tot / (len(traces) * len(cfg.fractions))
    return loss


def initial_weights(cfg: TuneConfig) -> np.ndarray:
    """float32[M, NF]: per learning rate, restart 0 = LRU (``w_age = -1``), others LRU plus
    Gaussian noise of ``init_scale`` on the demand-only features (``score.DEMAND_FEATURES``)."""
    rng = np.random.default_rng(cfg.seed)
    base = np.zeros(NF, np.float32)
    base[FEATURES.index("age")] = -1.0
    nd = len(DEMAND_FEATURES)  # pf and level are 0 in the demand-only relaxation: they stay at 0
    w = []
    for _lr in cfg.learning_rates:
        for k in range(cfg.restarts):
            noise = np.zeros(NF)
            if k:
                noise[:nd] = rng.normal(0, cfg.init_scale, nd)
            w.append(base + noise)
    return np.asarray(w, np.float32)


def hard_miss_rates(traces: Sequence[Trace], weights: np.ndarray, fractions, steps=None) -> np.ndarray:
    """float[M]: mean hard miss rate (misses / demands) of each weight vector over traces x
    fractions, each weight quantised for each trace (one vmapped replay per trace)."""
    M = len(weights)
    tot = np.zeros(M)
    for j, t in enumerate(traces):
        st = steps[j] if steps is not None else prepare_steps(t, "pinned")
        b = bounds_of(st)
        qs = np.stack([quantize(w, t.shape.num_layers, b) for w in weights])
        caps = capacity_slots(t, fractions)
        Q = np.repeat(qs, len(caps), axis=0)
        C = np.tile(caps, M)
        r = run_scores(t, Q, C, st)
        rate = (r["misses"] / np.maximum(r["demands"], 1)).reshape(M, len(caps))
        tot += rate.mean(axis=1)
    return tot / len(traces)


def tune(train: Sequence[Trace], val: Sequence[Trace], cfg: TuneConfig = TuneConfig(), name: str = "learned",
         progress: bool = True, log: Optional[Callable[[str], None]] = print) -> TuneResult:
    """Tune the score on ``train`` (soft loss), early-stop on ``val`` (hard simulator).

    Returns:
        :class:`TuneResult`; ``policy.meta`` records the config, traces and validation numbers.
    """
    if not train or not val:
        raise ValueError("tune needs at least one training and one validation trace")
    loss = make_loss(train, cfg)
    w0 = jnp.asarray(initial_weights(cfg))
    lrs = jnp.asarray(np.repeat(np.asarray(cfg.learning_rates, np.float32), cfg.restarts))
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=1.0)

    def init_one(w, lr):
        s = opt.init(w)
        s.hyperparams["learning_rate"] = lr
        return s
    opt_state = jax.vmap(init_one)(w0, lrs)
    vg = jax.value_and_grad(loss)

    def step_one(w, s):
        val, g = vg(w)
        upd, s = opt.update(g, s, w)
        return optax.apply_updates(w, upd), s, val

    @jax.jit
    def block(ws, states):
        def body(c, _):
            w, s = c
            w, s, v = jax.vmap(step_one)(w, s)
            return (w, s), v
        (ws, states), vals = lax.scan(body, (ws, states), None, length=cfg.steps_per_eval)
        return ws, states, vals

    val_steps = [prepare_steps(t, "pinned") for t in val]
    ws = w0
    best_val = hard_miss_rates(val, np.asarray(ws), cfg.fractions, val_steps)
    best_w = np.asarray(ws).copy()
    history = [dict(block=0, step=0, train_loss=None, val_miss_rate=best_val.copy(), seconds=0.0)]
    if log:
        log(f"tune: {len(w0)} members ({cfg.restarts} restarts x lr {list(cfg.learning_rates)}), "
            f"{len(train)} train / {len(val)} validation traces, capacities {list(cfg.fractions)}; "
            f"start: best hard validation miss rate {best_val.min():.4f}")
    stale, t0 = 0, time.perf_counter()
    for b in range(1, cfg.max_blocks + 1):
        ws, opt_state, vals = block(ws, opt_state)
        wn = np.asarray(ws)
        if not np.all(np.isfinite(wn)):
            raise FloatingPointError(f"tune: non-finite weights after block {b}; lower the learning rates")
        v = hard_miss_rates(val, wn, cfg.fractions, val_steps)
        better = v < best_val - 1e-12
        best_val = np.where(better, v, best_val)
        best_w[better] = wn[better]
        stale = 0 if better.any() else stale + 1
        history.append(dict(block=b, step=b * cfg.steps_per_eval, train_loss=np.asarray(vals)[-1],
                            val_miss_rate=v, seconds=time.perf_counter() - t0))
        if log and progress:
            log(f"  block {b:2d} (step {b * cfg.steps_per_eval:3d}, {time.perf_counter() - t0:6.1f} s): soft train "
                f"loss min {float(np.min(np.asarray(vals)[-1])):.4f}; hard val miss rate min {v.min():.4f} "
                f"(best so far {best_val.min():.4f}){'' if better.any() else ' - no member improved'}")
        if stale >= cfg.patience:
            break
    k = int(np.argmin(best_val))
    members = [(r, float(lr)) for lr in cfg.learning_rates for r in range(cfg.restarts)]
    meta = dict(config=dataclasses.asdict(cfg), train=[t.source for t in train], val=[t.source for t in val],
                best_member=dict(restart=members[k][0], learning_rate=members[k][1]),
                val_miss_rate=float(best_val[k]), blocks=len(history) - 1)
    pol = ScorePolicy(name, tuple(float(x) for x in best_w[k]), meta)
    compiles = block._cache_size() if hasattr(block, "_cache_size") else -1
    return TuneResult(policy=pol, history=history, members=members, best_member=k, best_val=float(best_val[k]),
                      best_weights=best_w, compiles=compiles)
