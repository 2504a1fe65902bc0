"""Figures and reports built from the result tables (Parquet) of the studies."""
