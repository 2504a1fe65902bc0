from harness.features.cache import FeatureSplits, cached_features

__all__ = ["FeatureSplits", "cached_features"]
