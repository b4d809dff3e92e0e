"""A differentiable relaxation of the parametric-score eviction policy.

The hard policy (:mod:`specmd_jax.core.score`, :mod:`specmd_jax.run.keyed`) evicts, at each
visit, the ``n`` evictable residents with the lowest keep score. Its miss count is a step
function of the weights. The relaxation replaces it with expectations that are smooth in the
weights, in the capacity and in the hardware numbers.

**State** per configuration, dense over the ``N = L * E`` experts (float32):

* ``r[x]``: probability that ``x`` is resident (mean field: experts are treated as independent);
* ``u[x]``, ``i[x]``: expected uses since insertion and expected insertion step of ``x``, given
  that it is resident.

``last use`` and the cumulative gate score of a resident are the trace's own (every demand of
a resident is a hit, and an admitted expert is stamped), so they are shared, not relaxed.

**One visit** (step ``s``, pass ``p``, layer ``l``, demand mask ``d``):

1. expected misses ``m = sum_x d_x (1 - r_x)`` (the objective sums them);
2. admitting the demand would leave occupancy ``M = sum r + m``; the excess ``e = M - C`` is
   served first by evicting non-demanded residents, then by *bypass* (as in the hard rules);
3. **soft threshold eviction**: each evictable ``x`` (weight ``a_x = (1 - d_x) r_x``) is
   evicted with probability ``sigma((theta - psi_x) / tau)``, where ``psi_x = w . phi_x``
   (normalised features, plus ``tie * x / N`` so that lower ids go first as in the hard
   tie-break) and ``theta`` solves ``sum_x a_x sigma((theta - psi_x)/tau) = min(e, sum a)``.
   ``theta`` is found by bisection on stopped gradients; one implicit-function Newton step
   gives its exact derivative (``d theta = -(d g) / g'``), so gradients do not flow through
   the bisection;
4. bypass: what still does not fit is taken from the newly admitted mass in descending id
   order (the hard rule admits the lowest ids), piecewise linear in ``C``;
5. ``u``, ``i`` of demanded experts become the residency-weighted mix of "was resident"
   (``u + 1``, ``i``) and "admitted now" (``1``, ``s``).

As ``tau -> 0`` with distinct scores (the ``tie`` term), ``r`` stays in {0, 1} and every
step equals the hard policy's: tested against :mod:`specmd_jax.run.keyed` on synthetic traces.

**Objectives** (per configuration): expected demand misses; expected TTFT of the demand-only
timing model (:mod:`specmd_jax.core.timing` without prefetch: a prefill pass lasts its layers'
compute plus ``misses * (latency + expert_bytes / bandwidth)``), averaged over requests.
``capacity`` is a float number of slots (``capacity_bytes / expert_bytes``), so
``d TTFT / d capacity_bytes`` and ``d TTFT / d bandwidth`` come from ``jax.grad``
(:func:`sensitivities`).

**Memory**: the scan runs in chunks of ``chunk`` visits under ``jax.checkpoint``, so the
backward pass stores one state per chunk plus one chunk of steps (``O(S / chunk + chunk)``
states for ``S`` visits) instead of one per visit.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from specmd_jax.kernels.keyed import demand_features
from specmd_jax.core.score import norms
from specmd_jax.core.trace import PREFILL, Trace
from specmd_jax.core.steps import StepArrays, prepare_steps


class SoftSteps(NamedTuple):
    """Device arrays of one trace for the soft scan (padded to a whole number of chunks).

    Attributes:
        step, layer: int32[S]; prefill, real: bool[S] (``real``: not padding).
        ids: int32[S, W] demanded global ids (-1 padding); units: int32[S, W] gate units.
    """

    step: Any
    layer: Any
    prefill: Any
    real: Any
    ids: Any
    units: Any


def soft_steps(trace: Trace, chunk: int = 64, steps: StepArrays | None = None, width: int | None = None,
               num_steps: int | None = None) -> SoftSteps:
    """Host-side arrays for :func:`soft_run`: ``prepare_steps`` padded to a multiple of
    ``chunk`` visits (or to ``num_steps``) and to ``width`` id columns, so that traces of
    different lengths share a program; padded visits and columns demand nothing and count
    nothing."""
    st = steps if steps is not None else prepare_steps(trace, "pinned")
    S, W = st.num_steps, st.width
    S2 = -(-max(int(num_steps or S), S) // chunk) * chunk
    if width is not None and width < W:
        raise ValueError(f"width={width} is below the largest visit demand {W}")
    W2 = int(width) if width is not None else W
    pre = np.asarray(trace.pass_phase)[st.pass_] == PREFILL

    def padded(a, fill):
        a = np.asarray(a)
        cols = ((0, W2 - W),) if a.ndim == 2 else ()
        return np.pad(a, ((0, S2 - S),) + cols, constant_values=fill)
    return SoftSteps(step=jnp.asarray(padded(st.step, 0)), layer=jnp.asarray(padded(st.layer, 0)),
                     prefill=jnp.asarray(padded(pre, False)), real=jnp.asarray(padded(np.ones(S, bool), False)),
                     ids=jnp.asarray(padded(st.ids, -1)), units=jnp.asarray(padded(st.units, 0)))


class SoftParams(NamedTuple):
    """Differentiable numbers of one configuration (every leaf vmappable).

    Attributes:
        w: float32[NF] weights over normalised features (``score.FEATURES`` order; ``pf`` and
            ``level`` are 0 in demand-only replay, so their weights have no effect here).
        capacity: float32[] slots (may be fractional).
        tau: float32[] temperature of the soft eviction (score units).
    """

    w: Any
    capacity: Any
    tau: Any


def _phi(st, s, l, L, E, gate, norm):
    f = demand_features(s, l, st["last"], st["u"], st["i"], gate, L, E)  # pf, level: 0 in demand-only replay
    return [f[k].astype(jnp.float32) / norm[k] for k in range(len(f))]


def _solve_theta(a, psi, target, tau, iters):
    """theta with ``sum a * sigmoid((theta - psi)/tau) = target`` (bisection, stopped grads),
    then one implicit Newton step that carries the exact first-order gradient."""
    a_, psi_, tgt_, tau_ = (lax.stop_gradient(v) for v in (a, psi, target, tau))
    live = a_ > 0
    lo0 = jnp.min(jnp.where(live, psi_, jnp.inf)) - 30.0 * tau_
    hi0 = jnp.max(jnp.where(live, psi_, -jnp.inf)) + 30.0 * tau_
    lo0 = jnp.where(jnp.isfinite(lo0), lo0, 0.0)
    hi0 = jnp.where(jnp.isfinite(hi0), hi0, 0.0)

    def body(_, b):
        lo, hi = b
        mid = 0.5 * (lo + hi)
        g = jnp.sum(a_ * jax.nn.sigmoid((mid - psi_) / tau_))
        return jnp.where(g < tgt_, mid, lo), jnp.where(g < tgt_, hi, mid)
    lo, hi = lax.fori_loop(0, iters, body, (lo0, hi0))
    th = lax.stop_gradient(0.5 * (lo + hi))
    sg = jax.nn.sigmoid((th - psi) / tau)
    g = jnp.sum(a * sg)
    gp = lax.stop_gradient(jnp.sum(a_ * sg * (1 - sg)) / tau_)
    return th - (g - target) / jnp.maximum(gp, 1e-12)


def _soft_step(st, x, prm: SoftParams, L, E, tie, iters, norm):
    N = L * E
    s, l, prefill, real, ids, units = x
    valid = ids >= 0
    idx = jnp.where(valid, ids, N)
    d = jnp.zeros(N, jnp.float32).at[idx].set(1.0, mode="drop")
    gate = st["gate"].at[idx].add(units, mode="drop")
    r = st["r"]
    miss = d * (1.0 - r)
    m = jnp.sum(miss)
    excess = jnp.sum(r) + m - prm.capacity
    a = (1.0 - d) * r
    ev = jnp.clip(excess, 0.0, jnp.sum(a))
    phi = _phi(st, s, l, L, E, gate, norm)
    psi = sum(prm.w[k] * phi[k] for k in range(len(phi))) + tie * jnp.arange(N, dtype=jnp.float32) / N
    theta = _solve_theta(a, psi, ev, prm.tau, iters)
    pev = jnp.where(ev > 0, jax.nn.sigmoid((theta - psi) / prm.tau), 0.0)
    r_keep = r - a * pev
    # bypass: the excess left after evicting every evictable, from the highest ids down
    byp = jnp.clip(excess - ev, 0.0, m)
    allow = m - byp
    before = jnp.cumsum(miss) - miss                       # missing mass of lower ids
    adm = jnp.clip(allow - before, 0.0, miss)
    r_new = r_keep + adm
    stay = d * r                                           # demanded and resident: a hit
    tot = jnp.maximum(stay + adm, 1e-12)
    u_new = jnp.where(d > 0, (stay * (st["u"] + 1.0) + adm * 1.0) / tot, st["u"])
    i_new = jnp.where(d > 0, (stay * st["i"] + adm * s) / tot, st["i"])
    last = jnp.where(d > 0, s, st["last"])                 # trace-determined (see module doc)
    keep = real
    out = dict(r=jnp.where(keep, r_new, r), u=jnp.where(keep, u_new, st["u"]), i=jnp.where(keep, i_new, st["i"]),
               last=jnp.where(keep, last, st["last"]), gate=jnp.where(keep, gate, st["gate"]),
               misses=st["misses"] + jnp.where(real, m, 0.0),
               prefill_misses=st["prefill_misses"] + jnp.where(real & prefill, m, 0.0))
    return out


def soft_init(N: int) -> dict:
    z = jnp.zeros(N, jnp.float32)
    return dict(r=z, u=z, i=z, last=jnp.zeros(N, jnp.int32), gate=jnp.zeros(N, jnp.int32),
                misses=jnp.float32(0.0), prefill_misses=jnp.float32(0.0))


def soft_run(xs: SoftSteps, prm: SoftParams, L: int, E: int, *, tie: float = 0.5, iters: int = 24,
             chunk: int = 64) -> dict:
    """Run the relaxation of one configuration over prepared steps (pure; jit/vmap/grad it).

    Args:
        xs: :func:`soft_steps` output (length a multiple of ``chunk``).
        prm: :class:`SoftParams` of this configuration.
        L, E: model shape (static).
        tie: weight of the lowest-id tie-break term ``tie * id / N`` (score units).
        iters: bisection iterations for the eviction threshold (static).
        chunk: visits per rematerialised chunk (static).

    Returns:
        ``{"misses", "prefill_misses"}`` float32[] expected counts, and the final ``r``.
    """
    norm = tuple(float(v) for v in norms(L))
    S = xs.step.shape[0]
    if S % chunk:
        raise ValueError(f"{S} steps is not a multiple of chunk={chunk}: build xs with soft_steps(chunk={chunk})")
    xs_c = jax.tree_util.tree_map(lambda v: v.reshape((S // chunk, chunk) + v.shape[1:]), xs)

    @jax.checkpoint
    def run_chunk(st, xc):
        def body(c, x):
            return _soft_step(c, x, prm, L, E, tie, iters, norm), None
        return lax.scan(body, st, xc)[0], None

    st, _ = lax.scan(run_chunk, soft_init(L * E), tuple(xs_c))
    return dict(misses=st["misses"], prefill_misses=st["prefill_misses"], r=st["r"])


def transfer_seconds(expert_bytes: int, bandwidth_gbps, latency_us):
    """Seconds per expert copy (differentiable in bandwidth and latency)."""
    return latency_us * 1e-6 + expert_bytes / (bandwidth_gbps * 1e9)


def prefill_compute_seconds(trace: Trace, hw) -> float:
    """Total prefill compute seconds of the trace under hardware ``hw`` (no stalls)."""
    L = trace.shape.num_layers
    tot = 0.0
    for ph, tok in zip(np.asarray(trace.pass_phase), np.asarray(trace.pass_tokens)):
        if ph == 0:
            tot += L * (hw.prefill_layer_us + int(tok) * hw.prefill_token_us) * 1e-6
    return tot


def sensitivities(trace: Trace, w, capacity_fractions, hw, *, tau: float = 0.05, iters: int = 24,
                  chunk: int = 64) -> "list[dict]":
    """Soft TTFT and its gradients with respect to bandwidth and cache bytes, per capacity.

    Args:
        trace: the trace (demand-only, pinned visits).
        w: NF real weights (e.g. a preset's :func:`specmd_jax.core.score.preset_weights` scaled,
            or a learned :class:`~specmd_jax.core.score.ScorePolicy`'s).
        capacity_fractions: cache sizes as fractions of all expert bytes.
        hw: a :class:`specmd_jax.core.timing.Hardware`.

    Returns:
        One dict per capacity: ``capacity_fraction``, ``soft_ttft_s``, ``soft_tpot_s``,
        ``soft_misses``, ``dttft_dbandwidth_s_per_gbps``, ``dttft_dcapacity_s_per_gib``,
        ``dtpot_dbandwidth_s_per_gbps`` and ``dtpot_dcapacity_s_per_gib`` (seconds of TTFT or TPOT
        per GB/s of link and per GiB of cache). A request's first prefill on a cold cache misses
        every expert whatever the capacity, so TTFT's capacity gradient is 0 on one-request traces.
    """
    xs = soft_steps(trace, chunk)
    L, E, B = trace.shape.num_layers, trace.shape.num_experts, trace.shape.expert_bytes
    phase = np.asarray(trace.pass_phase)
    R, D = max(int(np.sum(phase == 0)), 1), max(int(np.sum(phase == 1)), 1)
    comp = prefill_compute_seconds(trace, hw)
    dcomp = float(np.sum(phase == 1)) * L * hw.decode_layer_us * 1e-6
    w = jnp.asarray(np.asarray(w, np.float32))

    def times(bw, cap_bytes):
        out = soft_run(xs, SoftParams(w=w, capacity=cap_bytes / B, tau=jnp.float32(tau)), L, E, iters=iters,
                       chunk=chunk)
        x = transfer_seconds(B, bw, hw.latency_us)
        ttft = (comp + out["prefill_misses"] * x) / R
        tpot = (dcomp + (out["misses"] - out["prefill_misses"]) * x) / D
        return jnp.stack([ttft, tpot]), out["misses"]

    f = jax.jit(lambda bw, c: (times(bw, c), jax.jacrev(lambda a, b: times(a, b)[0], argnums=(0, 1))(bw, c)))
    rows = []
    for frac in capacity_fractions:
        cap_bytes = jnp.float32(frac * trace.shape.num_ids * B)
        (tt, mis), (gbw, gcap) = f(jnp.float32(hw.bandwidth_gbps), cap_bytes)
        rows.append(dict(capacity_fraction=float(frac), soft_ttft_s=float(tt[0]), soft_tpot_s=float(tt[1]),
                         soft_misses=float(mis), dttft_dbandwidth_s_per_gbps=float(gbw[0]),
                         dttft_dcapacity_s_per_gib=float(gcap[0]) * 2 ** 30,
                         dtpot_dbandwidth_s_per_gbps=float(gbw[1]), dtpot_dcapacity_s_per_gib=float(gcap[1]) * 2 ** 30))
    return rows


def preset_real_weights(q, num_layers: int) -> np.ndarray:
    """Real weights whose soft score equals the integer hard score ``q . f`` (``w_i = q_i n_i``):
    used to compare the relaxation with the hard policy (``tie`` < 1 then only breaks ties)."""
    return np.asarray(q, np.float64) * norms(num_layers)


__all__ = ["SoftSteps", "SoftParams", "soft_steps", "soft_run", "soft_init", "sensitivities",
           "transfer_seconds", "prefill_compute_seconds", "preset_real_weights"]
