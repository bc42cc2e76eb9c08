"""ClickHouse's HTTP interface over chDB (current ClickHouse, in process), as much of it as
faultline's ClickHouse client uses, so the client runs unchanged against current
ClickHouse in tests (Debian ships only 18.16):

- POST / with the statement as the body, or an insert statement in `?query=` and its
  rows as the body (RowBinary, loaded through a file, since chDB takes no stream);
- `?database=` selects the database; other settings in the URL are ignored;
- answers in the statement's FORMAT, TabSeparated when it names none; errors as HTTP 500
  with ClickHouse's own `Code: N. DB::Exception: ...` text.

Usage: chdb_http.py PORT_FILE [--config-file FILE]: listens on a free loopback port,
writes it to PORT_FILE, serves until killed. One request at a time (a chDB session is
not shared between threads).
"""

import os
import re
import sys
import tempfile
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

import chdb

INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(\w+)\s*\(([^)]*)\)\s*FORMAT\s+RowBinary\s*$", re.I
)
FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)


class Shim:
    def __init__(self, config_file):
        self.dir = tempfile.mkdtemp(prefix="chdb-http-")
        conn = f"file:{self.dir}/db"
        if config_file:
            conn += f"?config-file={config_file}"
        self.conn = chdb.connect(conn)

    def run(self, sql, database, fmt="TabSeparated"):
        if database:
            self.conn.query(f"USE {database}")
        return self.conn.query(sql, fmt).bytes()

    def insert(self, statement, rows, database):
        m = INSERT.match(statement)
        if not m:
            raise ValueError(f"the shim inserts only RowBinary with columns: {statement}")
        table, columns = m.group(1), [c.strip() for c in m.group(2).split(",")]
        types = {}
        described = self.run(f"DESCRIBE TABLE {table}", database, "TabSeparated")
        for line in described.decode().splitlines():
            name, typ = line.split("\t")[:2]
            types[name] = typ
        structure = ", ".join(f"{c} {types[c]}" for c in columns)
        path = os.path.join(self.dir, "rows.bin")
        with open(path, "wb") as f:
            f.write(rows)
        self.run(
            f"INSERT INTO {table} ({', '.join(columns)}) "
            f"SELECT * FROM file('{path}', RowBinary, '{structure}')",
            database,
        )
        return b""


def handler(shim):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.answer(200, b"Ok.\n")

        def do_POST(self):
            url = urllib.parse.urlparse(self.path)
            params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            database = params.get("database")
            try:
                if "query" in params:
                    out = shim.insert(params["query"], body, database)
                else:
                    sql = body.decode()
                    m = FORMAT.search(sql)
                    if m:
                        out = shim.run(sql[: m.start()], database, m.group(1))
                    else:
                        out = shim.run(sql, database)
                self.answer(200, out)
            except Exception as e:  # chDB raises its errors as plain exceptions
                text = str(e)
                if "Code:" not in text:
                    text = f"Code: 0. DB::Exception: {text}"
                self.answer(500, text.encode() + b"\n")

        def answer(self, status, body):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


def main():
    port_file = sys.argv[1]
    config_file = None
    if "--config-file" in sys.argv:
        config_file = sys.argv[sys.argv.index("--config-file") + 1]
    server = HTTPServer(("127.0.0.1", 0), handler(Shim(config_file)))
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(port_file + ".tmp", port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
