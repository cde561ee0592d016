"""ONNX for hdus-edge: export, provenance metadata, safe loading, quantization, fusion, inspection.

One job per module, and only ``export`` imports torch, so the inference path (``checks``,
``probe``, ``fuse``, ``session``, ``inspection``, ``quantize``) stays torch-free:

- ``metadata``   provenance in ``metadata_props`` (pure)
- ``export``     torch -> deterministic ONNX bytes (torch)
- ``checks``     safe loading of untrusted bytes: size cap, parse, checker, contract, allowlist
- ``probe``      run a checked model on a small batch, optionally in a limited child process
- ``session``    onnxruntime sessions from bytes, provider selection
- ``fuse``       one ONNX graph holding the main model, every seed and the combination rule
- ``pack``       same-architecture seeds as one wider chain (grouped convolutions) inside that graph
- ``quantize``   int8 quantization with onnxruntime.quantization
- ``inspection`` the facts ``hdus-edge inspect`` prints

Inside this package ``import onnx`` always means the onnx library (absolute imports only).
"""
