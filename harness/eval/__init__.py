from harness.eval.metrics import bootstrap_ci, cross_entropy, error_rate

__all__ = ["bootstrap_ci", "cross_entropy", "error_rate"]
