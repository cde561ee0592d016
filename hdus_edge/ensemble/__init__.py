"""Ensembles of a main model and neighbours' seeds.

``combine`` is pure numpy (shared by the torch learning core and the onnxruntime runtime);
``runtime`` runs ONNX members with onnxruntime. Nothing here imports torch.
"""

from hdus_edge.ensemble.combine import COMBINE_SPACES, combine, effective_lam, softmax

__all__ = ["COMBINE_SPACES", "combine", "effective_lam", "softmax"]
