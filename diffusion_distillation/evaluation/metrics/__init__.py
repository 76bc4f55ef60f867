"""Sample-quality metrics.

* `frechet`: Frechet distance, streaming feature statistics, Inception Score.
* `inception`: the standard 2015-12-05 FID Inception network (weights from a
  local `classify_image_graph_def.pb` or its `.npz`).
* `digits_classifier`: offline `digits_fd` / `digits_is` for the 8x8 digits.

Submodules are not imported here, so using one does not pull in the others'
dependencies.
"""
