from harness.eval.bits_per_byte import bits_per_byte
from harness.eval.metrics import bootstrap_ci, cross_entropy, error_rate

__all__ = ["bits_per_byte", "bootstrap_ci", "cross_entropy", "error_rate"]
