"""Model shapes of the MoE models the SpecMD paper (and our real traces) use.

``expert_bytes`` is the size of one expert's weights at the stored precision. Sources:

* OLMoE, Mixtral, Qwen1.5-MoE, Phi-3.5-MoE: SpecMD paper, Table 3 (per-expert size, fp16).
* Qwen3-30B-A3B: its ``config.json`` (``hidden_size`` 2048, ``moe_intermediate_size`` 768,
  48 layers, 128 experts, 8 per token); one expert = 3 matrices (gate, up, down) of
  2048 x 768 at bf16 (2 bytes) = ``3 * 2048 * 768 * 2`` bytes.
"""

from __future__ import annotations

from specmd_jax.core.trace import ModelShape

MiB = 2 ** 20

MODEL_PRESETS: dict[str, ModelShape] = {
    # SpecMD Table 3: 16 layers, 64 experts, top-8, 12 MiB per expert (fp16).
    "olmoe-1b-7b": ModelShape("olmoe-1b-7b", 16, 64, 8, 12 * MiB),
    # SpecMD Table 3: 32 layers, 8 experts, top-2, 336 MiB per expert (fp16).
    "mixtral-8x7b": ModelShape("mixtral-8x7b", 32, 8, 2, 336 * MiB),
    # SpecMD Table 3: 24 layers, 60 routed experts, top-4, 16.5 MiB per expert (fp16).
    "qwen1.5-moe-a2.7b": ModelShape("qwen1.5-moe-a2.7b", 24, 60, 4, int(16.5 * MiB)),
    # SpecMD Table 3: 32 layers, 16 experts, top-2, 150 MiB per expert (fp16).
    "phi-3.5-moe": ModelShape("phi-3.5-moe", 32, 16, 2, 150 * MiB),
    # Qwen3-30B-A3B config.json: hidden 2048, moe_intermediate 768; 3 matrices at bf16.
    "qwen3-30b-a3b": ModelShape("qwen3-30b-a3b", 48, 128, 8, 3 * 2048 * 768 * 2),
}


def get_model_preset(name: str) -> ModelShape:
    """The :class:`ModelShape` of a preset model.

    Args:
        name: a key of :data:`MODEL_PRESETS` (case-insensitive).

    Raises:
        ValueError: unknown name; the message lists the valid names.
    """
    key = str(name).lower()
    if key not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid names: {', '.join(sorted(MODEL_PRESETS))}")
    return MODEL_PRESETS[key]
