"""Loading exported artifacts on a runtime, parity gates and latency measurement.

Not implemented yet: see the open issue "Export layer, ONNX target, ONNX Runtime adapter".
"""
