"""Metrics that need more than a pairwise comparison of strings (those live with their task)."""
from speechfuse.metrics.verification import detection_error_tradeoff, eer_threshold, equal_error_rate, min_dcf, verification_metrics

__all__ = ["detection_error_tradeoff", "eer_threshold", "equal_error_rate", "min_dcf", "verification_metrics"]
