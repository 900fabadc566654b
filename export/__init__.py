"""Turning a MoR model into deployable artifacts (stage wrappers, routing plans, targets).

Not implemented yet: see the open issue "Export layer, ONNX target, ONNX Runtime adapter".
"""
