"""ONNX for hdus-edge: export, provenance metadata, safe loading, quantization, fusion, inspection.

One job per module, and only ``export`` imports torch, so the inference path (``checks``, ``cost``,
``probe``, ``session``, ``inspection``, ``quantize``) stays torch-free. Never imports ``ensemble``
or anything above it (the fused ensemble graph is ``ensemble.fuse``):

- ``metadata``   provenance in ``metadata_props`` (pure)
- ``export``     torch -> deterministic ONNX bytes (torch)
- ``contract``   the fleet's I/O contract and the loading policy: plain values, no onnx import
- ``checks``     safe loading of untrusted bytes: size cap, parse, checker, contract, allowlist, budget
- ``cost``       static MACs and parameters per sample from shape inference (the seed compute budget)
- ``probe``      run a checked model on a small batch, optionally in a limited child process
- ``session``    onnxruntime sessions from bytes, provider selection
- ``quantize``   int8 quantization with onnxruntime.quantization
- ``inspection`` the facts ``hdus-edge inspect`` prints

Inside this package ``import onnx`` always means the onnx library (absolute imports only).
"""
