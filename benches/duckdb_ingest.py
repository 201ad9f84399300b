#!/usr/bin/env python3
"""DuckDB reference for protocol I (called by `shardcast bench ingest`).

Usage: duckdb_ingest.py CSV PARQUET FROM UNTIL
Copies the CSV into one Parquet file (DuckDB's defaults: snappy) and runs the
same resampling query as shardcast: 5-minute means per series between FROM
and UNTIL. Prints a JSON object with the timings.
"""
import json
import os
import sys
import time

import duckdb


def main():
    csv, parquet, start, until = sys.argv[1:5]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    t = time.perf_counter()
    con.execute(
        f"COPY (SELECT * FROM read_csv('{csv}', header = true, "
        "columns = {'timestamp': 'TIMESTAMP', 'app': 'VARCHAR', 'shard_type': 'VARCHAR', "
        "'metric': 'VARCHAR', 'value': 'DOUBLE'})) "
        f"TO '{parquet}' (FORMAT parquet)"
    )
    copy_s = time.perf_counter() - t
    start = start.rstrip("Z").replace("T", " ")
    until = until.rstrip("Z").replace("T", " ")
    times = []
    for _ in range(5):  # median of five runs, as on the shardcast side
        t = time.perf_counter()
        groups = con.execute(
            "SELECT app, shard_type, metric, time_bucket(INTERVAL '5 minutes', timestamp) AS bin, avg(value) "
            f"FROM read_parquet('{parquet}') WHERE timestamp >= TIMESTAMP '{start}' AND timestamp < TIMESTAMP '{until}' "
            "GROUP BY ALL"
        ).fetchall()
        times.append(time.perf_counter() - t)
    query_s = sorted(times)[2]
    print(json.dumps({"copy_s": copy_s, "query_s": query_s, "bytes": os.path.getsize(parquet), "groups": len(groups)}))


if __name__ == "__main__":
    main()
