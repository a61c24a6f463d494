"""Calibration: NormRatio block selection, banks, thresholds and the audit bundle (SPEC §4, §10)."""
