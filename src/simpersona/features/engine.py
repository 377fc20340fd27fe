"""The features' query engine: an Ibis connection on DuckDB (default) or PySpark, with the
settings every user of `features.aggregate` needs (UTC, memory and spill bounds). Public: the
features stage and the simulation's log statistics both run the aggregation on it; the Spark
steps past the aggregation (features/spark.py, personas/spark.py) share its Spark session.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal


def jvm_size(size: str) -> str:
    """A DuckDB-style size as a JVM one, in MiB.

    >>> jvm_size("2GB"), jvm_size("1.5GiB"), jvm_size("512MB")
    ('2048m', '1536m', '512m')
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt])i?b?\s*", size.lower())
    if m is None:
        raise ValueError(f"memory size {size!r}: expected e.g. '2GB' or '512MB'")
    return f"{max(1, round(float(m[1]) * 1024 ** ('kmgt'.index(m[2]) - 1)))}m"


def spark_session(threads: int = 2, memory: str = "2GB"):
    """The process's SparkSession (created once, then reused).

    Local (no launcher): `local[threads]` with a `memory` driver heap, `threads × 2` shuffle
    partitions, no web UI, executors on this interpreter (PYSPARK_PYTHON unless set). Under
    `spark-submit` (the JVM started first) the master, memory, partitions and executors' Python
    are the launcher's (`--master`, `--conf`). Always: UTC session time, Arrow transfers, Parquet
    timestamps as int64 microseconds (Spark's default INT96 carries no UTC mark for Arrow)."""
    from pyspark.sql import SparkSession

    b = SparkSession.builder.appName("simpersona")
    if "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit: a local session
        # PySpark reads the workers' interpreter from the environment only (its default is `python3`)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        b = (
            b.master(f"local[{threads}]")
            .config("spark.driver.memory", jvm_size(memory))
            .config("spark.sql.shuffle.partitions", str(max(2, threads * 2)))
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
        )
    return (
        b.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .getOrCreate()
    )


def connect(engine: Literal["duckdb", "pyspark"] = "duckdb", threads: int = 2, memory_limit: str = "1GB",
            temp_dir: Path | None = None, max_temp_directory_size: str = "8GB", progress: bool = False):
    """An Ibis connection. DuckDB spills to `temp_dir` (created) up to `max_temp_directory_size`;
    Spark's local driver heap is `memory_limit`."""
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
    return ibis.pyspark.connect(spark_session(threads, memory_limit))
