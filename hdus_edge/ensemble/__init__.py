"""Ensembles of a main model and neighbours' seeds.

- ``combine``: the combination rule, pure numpy (shared by the torch learning core and the runtime).
- ``runtime``: the live ensemble on onnxruntime, rebuilt when the member set changes.
- ``fuse``: one ONNX graph holding the main model, every seed and the combination rule.
- ``pack``: same-architecture seeds as one wider chain (grouped convolutions) inside that graph.
- ``fuse_child``: that graph built in a child process, so the agent never loads onnx.

Never imports torch (not even inside a function), ``transport``, ``device`` or anything above it.
"""

from hdus_edge.ensemble.combine import COMBINE_SPACES, combine, effective_lam, softmax

__all__ = ["COMBINE_SPACES", "combine", "effective_lam", "softmax"]
