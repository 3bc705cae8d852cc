"""Deployment: ONNX export and the ONNX Runtime backend (``sr_tile.deploy.onnx``)."""
