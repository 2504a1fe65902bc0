"""Pure trial functions: a study's config in, result rows (one Polars frame) out.

The same function runs in-process, as a Ray Tune trial, or inside a Ray Data pipeline.
"""
