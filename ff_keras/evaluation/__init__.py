"""Held-out evaluation: metrics with CIs, fairness slices, calibration, report."""
