"""The trace's field vocabulary: the pass phases and every array field's in-memory dtype and ndim
(shared by the trace, its checks and the npz format)."""

from __future__ import annotations

import numpy as np

PREFILL, DECODE = 0, 1

# In-memory dtype of each integer field (cast only when every value fits) and ndim of every array field.
INT_FIELDS = {"pass_request": np.int32, "pass_phase": np.int8, "pass_tokens": np.int32,
               "cell_offsets": np.int64, "experts": np.int16}
FLOAT_FIELDS = ("weights", "pred_scores", "logits")
NDIM = {"pass_request": 1, "pass_phase": 1, "pass_tokens": 1, "cell_offsets": 1, "experts": 2,
         "weights": 2, "pred_scores": 2, "logits": 2}
