"""Calibration: supervisor thresholds with guarantees, and exit policies for multi-exit models."""
