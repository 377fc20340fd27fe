"""The features' query engine: an Ibis connection on DuckDB (default) or PySpark, with the
settings every user of `features.aggregate` needs (UTC, memory and spill bounds). Public: the
features stage and the simulation's log statistics both run the aggregation on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal


def connect(engine: Literal["duckdb", "pyspark"] = "duckdb", threads: int = 2, memory_limit: str = "1GB",
            temp_dir: Path | None = None, max_temp_directory_size: str = "8GB", progress: bool = False):
    """An Ibis connection. DuckDB spills to `temp_dir` (created) up to `max_temp_directory_size`."""
    import ibis

    if engine == "duckdb":
        kw = {}
        if temp_dir is not None:
            Path(temp_dir).mkdir(parents=True, exist_ok=True)
            kw.update(temp_directory=str(temp_dir), max_temp_directory_size=max_temp_directory_size)
        con = ibis.duckdb.connect(threads=threads, memory_limit=memory_limit, **kw)
        con.raw_sql("SET TimeZone='UTC'")
        con.raw_sql("SET preserve_insertion_order=false")
        con.raw_sql(f"SET enable_progress_bar={'true' if progress else 'false'}")
        return con
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(f"local[{threads}]")
        .appName("simpersona-features")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(max(2, threads * 2)))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    return ibis.pyspark.connect(spark)
