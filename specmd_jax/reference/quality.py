"""Quality proxies of the timed reference replay: what happened to each recorded (token, expert)
pair of a visit and at which precision the executed experts ran (:mod:`specmd_jax.core.miss`)."""

from __future__ import annotations

from specmd_jax.core.semantics import SB_SCALE


def visit_proxies(add, E, lv_bits, l, rec_rows, rec_w, new_rows, served_lvl, subs):
    """Quality proxies of one visit, counted through ``add(name, layer, value)``: the recorded
    (token, expert) pairs (served, substituted, dropped or rerouted, and their weight units) and the
    bits of what ran (``served_lvl``: level of each served id, ``("sub", id)`` of substitutes)."""
    for i, row in enumerate(rec_rows):
        new = set(new_rows[i])
        add("tokens", l)
        add("tokens_changed", l, int(new != set(row)))
        for e, w in zip(row, rec_w[i]):
            g, u = l * E + e, round(w * SB_SCALE)
            add("pairs", l)
            add("units_total", l, u)
            if e not in new:
                add("pairs_rerouted", l)
                add("units_rerouted", l, u)
            elif g in served_lvl:
                add("pairs_served", l)
                if served_lvl[g] == 0:
                    add("units_full", l, u)
            elif g in subs:
                add("pairs_substituted", l)
                add("units_substituted", l, u)
            else:
                add("pairs_dropped", l)
                add("units_dropped", l, u)
        for e in new_rows[i]:
            g = l * E + e
            ran = served_lvl.get(g, served_lvl.get(("sub", g)))
            if ran is not None:
                add("exec_pairs", l)
                add("bits_served", l, lv_bits[ran])
