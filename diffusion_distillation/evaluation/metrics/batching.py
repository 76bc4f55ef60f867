"""Fixed-size batches for jitted networks, so each compiles only once."""

from typing import Callable, Mapping

import numpy as np


def map_padded_batches(
    fn: Callable[[np.ndarray], Mapping[str, object]], inputs: np.ndarray,
    size: int) -> dict[str, np.ndarray]:
  """`fn` on consecutive chunks of exactly `size` inputs, outputs concatenated.

  The last chunk is padded with zeros (of the inputs' dtype) to `size`, and the
  rows of `fn`'s outputs that belong to the padding are dropped. `fn` maps a
  chunk to a dict of arrays with one row per input; `inputs` must be non-empty.
  """
  outs = []
  for start in range(0, len(inputs), size):
    chunk = inputs[start:start + size]
    n = len(chunk)
    if n < size:
      chunk = np.concatenate(
          [chunk, np.zeros((size - n,) + chunk.shape[1:], chunk.dtype)])
    out = fn(chunk)
    outs.append({k: np.asarray(v)[:n] for k, v in out.items()})
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
