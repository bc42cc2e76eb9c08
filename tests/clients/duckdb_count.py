"""Reads faultline's sealed blocks with DuckDB (a real third-party Parquet reader) and
prints, as one JSON line, the total span count and the spans per trace for the trace ids
given on the command line.

Usage: duckdb_count.py BLOCKS_DIR TRACE_ID [TRACE_ID ...]
"""
import json
import sys

import duckdb


def main() -> int:
    blocks, ids = sys.argv[1], sys.argv[2:]
    con = duckdb.connect()
    glob = f"{blocks}/*.parquet"
    total = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
    per_trace = {}
    for tid in ids:
        n = con.execute(
            f"SELECT count(*) FROM read_parquet('{glob}') WHERE lower(hex(trace_id)) = ?",
            [tid.lower()],
        ).fetchone()[0]
        per_trace[tid] = n
    # Typed attribute JSON is queryable too: the status code of one span as an integer.
    sample = con.execute(
        f"SELECT json_extract(attributes, '$.\"http.response.status_code\".i')::INTEGER "
        f"FROM read_parquet('{glob}') WHERE attributes LIKE '%http.response.status_code%' LIMIT 1"
    ).fetchone()
    print(json.dumps({"total": total, "per_trace": per_trace, "status_code_sample": sample[0] if sample else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
