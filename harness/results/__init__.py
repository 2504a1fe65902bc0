from harness.results.schema import (
    RESULT_SCHEMA,
    RunInfo,
    point_rows,
    read_results,
    summarise,
    write_parquet_atomic,
)

__all__ = ["RESULT_SCHEMA", "RunInfo", "point_rows", "read_results", "summarise", "write_parquet_atomic"]
