"""Loading exported artifacts on a runtime (ONNX Runtime today), the shared pipeline, parity
gates against the PyTorch reference, and latency measurement."""
