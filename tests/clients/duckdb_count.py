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
    # Blocks promote different attribute keys to columns: union their schemas by name.
    src = f"read_parquet('{blocks}/*.parquet', union_by_name = true)"
    total = con.execute(f"SELECT count(*) FROM {src}").fetchone()[0]
    per_trace = {}
    for tid in ids:
        n = con.execute(
            f"SELECT count(*) FROM {src} WHERE lower(hex(trace_id)) = ?",
            [tid.lower()],
        ).fetchone()[0]
        per_trace[tid] = n
    # Frequent attributes are typed columns: the status code of one span as an integer.
    sample = con.execute(
        f'SELECT "attr.http.response.status_code" FROM {src} '
        f'WHERE "attr.http.response.status_code" IS NOT NULL LIMIT 1'
    ).fetchone()
    print(json.dumps({"total": total, "per_trace": per_trace, "status_code_sample": sample[0] if sample else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
