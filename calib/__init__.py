"""Calibration sets for INT8: degradation-stratified sampling, stage-input capture, feeders."""
