"""Seeded synthetic MoE routing traces (numpy only).

Routing of token ``t`` at layer ``l`` (per request, same for prefill and decode tokens):

* **popularity**: log-weights of a Zipf(``skew``) law over a random per-layer permutation of
  the ``E`` experts (``skew = 0``: uniform);
* **temporal reuse**: each expert the previous token of the same request chose at layer ``l``
  gets a large bonus with probability ``reuse`` (prefill -> decode continues the sequence);
* **cross-layer correlation**: a fixed random permutation ``pi_l`` of the experts per layer;
  for each expert ``e`` this token chose at layer ``l-1``, ``pi_l(e)`` gets a large bonus with
  probability ``cross_layer``, plus ``rank_coupling * (K - 1 - s)`` if ``e`` was in rank slot
  ``s`` (0: the bonused experts are ordered by their logits; larger: a token's rank order
  carries across layers, as in real routers, whose slot-aligned pairs are strongly dependent);
* selection: Gumbel-top-k (sampling without replacement) on ``log w + Gumbel + bonuses``; ids
  are emitted in descending score order (router rank order, bonused experts first).

Weights: softmax of the chosen experts' router logits ``log w + Gumbel`` renormalised over the
K (float32, sum 1).

Predictions (``pred_noise`` set): at visit ``(p, l)`` the predicted score of expert ``e`` of layer
``l + 1`` is the sum over the pass's tokens of ``softmax_e(z + PRED_MARGIN * routed + pred_noise * N(0, 1))``
where ``z`` are the next layer's true router logits and ``routed`` marks the experts it actually
chose: a stand-in for "the next layer's gate on the current hidden state" whose quality one
number controls (0: the routed experts nearly always score highest; ~10: almost no signal).
Drawn from a separate random stream, so the routing does not depend on ``pred_noise``.

Router logits (``with_logits``): per routed token, the selection scores ``log w + Gumbel +
bonuses`` of all ``E`` experts of its layer (the ids are their top-``K``), for cache-aware
routing. The bonuses are part of them: they stand for the hidden-state preference that makes
an expert nearly certain, so a cache bias can displace the marginal choices but hardly a
bonused one. The bonuses decide selection and rank only; leaving them out of the weights
keeps the weights non-degenerate (a bonus is "large" only so that it nearly forces a choice).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

from . import checks
from specmd_jax.core.limits import max_npz_bytes
from specmd_jax.core.presets import get_model_preset
from specmd_jax.core.trace import DECODE, PREFILL, ModelShape, Trace, make_trace

BONUS = 50.0  # >> spread of log w + Gumbel, so a bonused expert nearly always beats an unbonused one
PRED_MARGIN = 4.0  # predicted-logit margin of the experts the next layer really routes to


def _per_layer(name: str, v, L: int) -> np.ndarray:
    """float64[L] from a number or a length-``L`` sequence (ValueError naming the knob)."""
    a = np.asarray(v, np.float64)
    if a.ndim == 0:
        return np.full(L, float(a))
    if a.shape != (L,):
        raise ValueError(f"{name} must be a number or a list of {L} per-layer values, got {len(a)} values")
    return a


def _check(skew, reuse, cross_layer, num_requests, prompt_len, gen_len, pred_noise=None) -> None:
    if pred_noise is not None and not (np.isfinite(pred_noise) and pred_noise >= 0):
        raise ValueError(f"pred_noise must be a finite number >= 0 or None, got {pred_noise!r}")
    if not np.all(np.isfinite(np.asarray(skew, np.float64)) & (np.asarray(skew, np.float64) >= 0)):
        raise ValueError(f"skew must be finite and >= 0, got {skew!r}")
    for name, v in (("reuse", reuse), ("cross_layer", cross_layer)):
        a = np.asarray(v, np.float64)
        if not np.all((a >= 0.0) & (a <= 1.0)):
            raise ValueError(f"{name} must be in [0, 1], got {v!r}")
    for name, v in (("prompt_len", prompt_len), ("gen_len", gen_len)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
    if int(num_requests) != num_requests or num_requests < 1:
        raise ValueError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    if prompt_len == 0 and gen_len == 0:
        raise ValueError("prompt_len and gen_len are both 0: a request needs at least one token")


def _route(shape: ModelShape, R: int, T: int, skew, reuse: float, cross_layer,
           rng: np.random.Generator, keep_logits: bool = False, keep_scores: bool = False,
           rank_coupling: float = 0.0):
    """Route ``R`` independent token sequences of length ``T`` (``skew``, ``cross_layer``: a
    number or per-layer values; the random draws do not depend on them).

    Returns:
        ids int64[R, T, L, K] (rank order), weights float32[R, T, L, K] and, if ``keep_logits``,
        the router logits float32[R, T, L, E] (else ``None``) and, if ``keep_scores``, the
        selection scores (logits + bonuses) float32[R, T, L, E] (else ``None``).
    """
    L, E, K = shape.num_layers, shape.num_experts, shape.top_k
    logw = np.empty((L, E))
    skews = _per_layer("skew", skew, L)
    cross_p = _per_layer("cross_layer", cross_layer, L)
    slot_extra = (K - 1 - np.arange(K))[None, :].astype(np.float64)
    for l in range(L):
        logw[l, rng.permutation(E)] = -skews[l] * np.log(np.arange(1, E + 1))
    pi = np.stack([rng.permutation(E) for _ in range(L)])   # cross-layer map of layer l (from l-1)
    ids = np.zeros((R, T, L, K), np.int64)
    wts = np.zeros((R, T, L, K), np.float32)
    rows = np.arange(R)[:, None]
    logits = np.zeros((R, T, L, E), np.float32) if keep_logits else None
    scores = np.zeros((R, T, L, E), np.float32) if keep_scores else None
    for t in range(T):
        z = logw[None] + rng.gumbel(size=(R, L, E))           # router logits [R, L, E]
        if keep_logits:
            logits[:, t] = z
        keep = rng.random((R, L, K)) < reuse                    # reuse coin per previous-token slot
        cross = rng.random((R, L, K)) < cross_p[None, :, None]  # cross-layer coin per l-1 slot
        for l in range(L):
            s = z[:, l].copy()
            if t > 0:
                s[rows, ids[:, t - 1, l]] += BONUS * keep[:, l]
            if l > 0:
                s[rows, pi[l][ids[:, t, l - 1]]] += cross[:, l] * (BONUS + rank_coupling * slot_extra)
            if keep_scores:
                scores[:, t, l] = s
            top = np.argpartition(-s, K - 1, axis=1)[:, :K] if K < E else np.tile(np.arange(E), (R, 1))
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1, kind="stable"), 1)
            ids[:, t, l] = top
            zc = np.take_along_axis(z[:, l], top, 1)
            ez = np.exp(zc - zc.max(axis=1, keepdims=True))
            wts[:, t, l] = ez / ez.sum(axis=1, keepdims=True)
    return ids, wts, logits, scores


def _predicted(ids: np.ndarray, logits: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Per-token predicted score float32[R, T, L, E] of layer ``l + 1`` made at layer ``l``
    (layer ``L - 1``: NaN); see the module docstring."""
    R, T, L, E = logits.shape
    out = np.full((R, T, L, E), np.nan, np.float32)
    if L < 2:
        return out
    y = logits[:, :, 1:].astype(np.float64)
    routed = np.zeros_like(y, bool)
    np.put_along_axis(routed, ids[:, :, 1:], True, axis=3)
    y = y + PRED_MARGIN * routed + noise * rng.standard_normal(y.shape)
    y = np.exp(y - y.max(axis=3, keepdims=True))
    out[:, :, :-1] = (y / y.sum(axis=3, keepdims=True)).astype(np.float32)
    return out


def _check_size(shape: ModelShape, n: int, pl: int, gl: int) -> None:
    """ValueError when the routing pass's working arrays for ``n`` requests of ``pl + gl`` tokens
    would exceed :func:`~specmd_jax.core.limits.max_npz_bytes`."""
    L, K = shape.num_layers, shape.top_k
    rows = n * (pl + gl) * L
    need = rows * (8 * shape.num_experts + 6 * K)   # the routing pass's per-row float32/int16 working arrays
    if need > max_npz_bytes():
        raise ValueError(f"num_requests x (prompt_len + gen_len) x L = {n} x {pl + gl} x {L} = {rows} routed rows "
                         f"would take about {need / 2 ** 30:.1f} GiB to generate (limit {max_npz_bytes() / 2 ** 30:.1f} "
                         "GiB, SPECMD_MAX_NPZ_BYTES)")


def _pred_blocks(ids: np.ndarray, logits: np.ndarray, noise: float, seed: int, pl: int) -> list[np.ndarray]:
    """Per request the predictions of its passes, in pass order: the prefill pass's ``[L, E]``
    (its tokens summed; none when ``pl`` is 0), then the decode passes' ``[gen_len * L, E]``."""
    E = logits.shape[-1]
    pt = _predicted(ids, logits, noise, np.random.default_rng([seed, 1]))   # [R, T, L, E]
    blocks = []
    for r in range(len(ids)):
        if pl:
            blocks.append(pt[r, :pl].sum(axis=0))          # prefill pass: [L, E]
        blocks.append(pt[r, pl:].reshape(-1, E))   # decode passes: [gl * L, E]
    return blocks


def _pass_blocks(ids: np.ndarray, wts: np.ndarray, scores: Optional[np.ndarray], pl: int, gl: int):
    """Rows of every request in trace order (pass, layer, token): expert and weight blocks (and
    router-logit blocks from ``scores``, none when it is ``None``), the phase and tokens of each pass.
    Prefill pass: [L, pl, K]; decode passes: [gl, L, K]."""
    K = ids.shape[-1]
    ex_blocks, w_blocks, lg_blocks, phase, tokens = [], [], [], [], []
    for r in range(len(ids)):
        if scores is not None:
            E = scores.shape[-1]
            if pl:
                lg_blocks.append(scores[r, :pl].transpose(1, 0, 2).reshape(-1, E))
            lg_blocks.append(scores[r, pl:].reshape(-1, E))
        if pl:
            ex_blocks.append(ids[r, :pl].transpose(1, 0, 2).reshape(-1, K))
            w_blocks.append(wts[r, :pl].transpose(1, 0, 2).reshape(-1, K))
            phase.append(PREFILL)
            tokens.append(pl)
        ex_blocks.append(ids[r, pl:].reshape(-1, K))
        w_blocks.append(wts[r, pl:].reshape(-1, K))
        phase += [DECODE] * gl
        tokens += [1] * gl
    return ex_blocks, w_blocks, lg_blocks, phase, tokens


def _source(shape: ModelShape, n: int, pl: int, gl: int, skew, reuse, cross_layer, seed: int, rank_coupling,
            pred_noise, with_logits) -> str:
    """The trace's ``source``: the call that generates it (knobs at their defaults left out)."""
    return (f"synthetic.generate(model={shape.name!r}, num_requests={n}, prompt_len={pl}, gen_len={gl}, "
            f"skew={skew}, reuse={reuse}, cross_layer={cross_layer}, seed={seed}"
            + (f", rank_coupling={rank_coupling}" if rank_coupling else "")
            + (f", pred_noise={pred_noise}" if pred_noise is not None else "")
            + (", with_logits=True)" if with_logits else ")"))


def generate(model: Union[str, ModelShape] = "olmoe-1b-7b", *, num_requests: int = 2, prompt_len: int = 32,
             gen_len: int = 64, skew: Union[float, Sequence[float]] = 1.0, reuse: float = 0.5,
             cross_layer: Union[float, Sequence[float]] = 0.3, rank_coupling: float = 0.0, seed: int = 0,
             with_weights: bool = True, pred_noise: Optional[float] = None, with_logits: bool = False) -> Trace:
    """A deterministic synthetic trace: per request one PREFILL pass then ``gen_len`` DECODE passes.

    Args:
        model: preset name (:data:`~specmd_jax.core.presets.MODEL_PRESETS`) or a :class:`ModelShape`.
        num_requests: requests (independent sequences, request ids ``0..num_requests-1``).
        prompt_len: prompt tokens (one prefill pass per request; none when 0).
        gen_len: decode passes (1 token each) per request.
        skew: Zipf exponent of per-layer popularity (>= 0; 0 = uniform), or ``L`` per-layer values.
        reuse: probability that each previous-token expert (same layer) gets the reuse bonus.
        cross_layer: probability per slot that ``pi_l(e)`` of an expert chosen at ``l-1`` gets a
            bonus, or ``L`` per-layer values (entry ``l`` couples layer ``l`` to ``l - 1``; entry 0
            is unused). Fitted values for the paper's models: :mod:`specmd_jax.study.calibrate`.
        rank_coupling: extra cross-layer bonus per rank slot (>= 0; module docstring).
        seed: seed of ``np.random.default_rng``.
        with_weights: attach float32 router weights.
        pred_noise: attach next-layer predictions (``pred_scores``) of this noise level (see the
            module docstring); ``None``: no predictions.
        with_logits: attach the router logits of every routed token (see the module docstring).

    Returns:
        A validated trace with ``P = num_requests * (gen_len + (prompt_len > 0))`` passes;
        ``experts`` int16[R, K] with ``R = num_requests * (prompt_len + gen_len) * L``.

    Raises:
        ValueError: a knob out of range (message names the knob and value) or unknown model.
    """
    _check(skew, reuse, cross_layer, num_requests, prompt_len, gen_len, pred_noise)
    shape = model if isinstance(model, ModelShape) else get_model_preset(model)
    L = shape.num_layers
    _per_layer("skew", skew, L), _per_layer("cross_layer", cross_layer, L)
    n, pl, gl = int(num_requests), int(prompt_len), int(gen_len)
    seed = checks.whole("seed", seed, 0, 2 ** 63 - 1)
    _check_size(shape, n, pl, gl)
    rng = np.random.default_rng(seed)
    if not (np.isfinite(rank_coupling) and rank_coupling >= 0):
        raise ValueError(f"rank_coupling must be a finite number >= 0, got {rank_coupling!r}")
    ids, wts, logits, scores = _route(shape, n, pl + gl, skew, float(reuse), cross_layer, rng,
                                      keep_logits=pred_noise is not None, keep_scores=bool(with_logits),
                                      rank_coupling=float(rank_coupling))
    pred_blocks = [] if pred_noise is None else _pred_blocks(ids, logits, float(pred_noise), seed, pl)
    ex_blocks, w_blocks, lg_blocks, phase, tokens = _pass_blocks(ids, wts, scores, pl, gl)
    per_pass = n * ((pl > 0) + gl)
    counts = np.repeat(np.asarray(tokens), L)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    src = _source(shape, n, pl, gl, skew, reuse, cross_layer, seed, rank_coupling, pred_noise, with_logits)
    return make_trace(shape, np.repeat(np.arange(n), (pl > 0) + gl), phase, tokens, offsets,
                      np.concatenate(ex_blocks), np.concatenate(w_blocks) if with_weights else None,
                      source=src, notes=(f"synthetic: Zipf popularity, reuse bonus, cross-layer bonus; "
                                         f"{per_pass} passes",),
                      pred_scores=np.concatenate(pred_blocks) if pred_blocks else None,
                      logits=np.concatenate(lg_blocks) if lg_blocks else None)


def decode_stream(model: Union[str, ModelShape] = "olmoe-1b-7b", tokens: int = 256, *, skew=1.0,
                  reuse: float = 0.5, cross_layer=0.3, rank_coupling: float = 0.0, seed: int = 0,
                  with_weights: bool = True, pred_noise: Optional[float] = None,
                  with_logits: bool = False) -> Trace:
    """One request of ``tokens`` decode passes and no prefill (see :func:`generate`)."""
    return generate(model, num_requests=1, prompt_len=0, gen_len=tokens, skew=skew, reuse=reuse,
                    cross_layer=cross_layer, rank_coupling=rank_coupling, seed=seed, with_weights=with_weights,
                    pred_noise=pred_noise, with_logits=with_logits)
