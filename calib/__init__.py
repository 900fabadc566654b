"""Calibration sets for INT8 quantization.

Not implemented yet: see the open issue "Calibration, INT8 quantization, and the OpenVINO target".
"""
