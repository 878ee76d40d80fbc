"""Training on a library's own pictures (issue 16): `Library.train`, `lookalike train`.

data.py (labels, split) and views.py (augmentations, the feature cache) need no torch; fit.py (the
loop) and export.py (ONNX) do, and are imported only by a training run. The trained model is used by
lookalike.embed.trained, which needs ONNX Runtime only.
"""
