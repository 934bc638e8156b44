"""Triage of one photo's probabilities: differential, risk tier, thresholds, and the case report.

Zhao et al. 2019 tiers and Han et al. 2018 per-class operating thresholds.
"""
