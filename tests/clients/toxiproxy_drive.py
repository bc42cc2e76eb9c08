"""Drives a Toxiproxy-compatible API (faultline proxy) with Toxiproxy's Python client,
`toxiproxy-python`, and measures each toxic on real TCP connections through the proxy.

Usage: toxiproxy_drive.py API_PORT

Upstreams are servers in this process: an echo server, and a "source" that answers a
request line `SEND N CLOSE|KEEP` with N bytes (then closes or not). Prints one JSON
object of measurements; the Rust test (crates/faultline/tests/chaos_proxy.rs) judges them.
"""

import json
import random
import socket
import statistics
import sys
import time

import requests
from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, ProxyExists

from tcp_servers import echo, serve

API_PORT = int(sys.argv[1])
APIConsumer.host = "127.0.0.1"
APIConsumer.port = API_PORT
API = f"http://127.0.0.1:{API_PORT}"


def source(c):
    try:
        f = c.makefile("rb")
        line = f.readline().decode().split()
        n, mode = int(line[1]), line[2]
        block = bytes(random.getrandbits(8) for _ in range(4096))
        left = n
        while left > 0:
            c.sendall(block[: min(left, len(block))])
            left -= min(left, len(block))
        if mode == "KEEP":
            time.sleep(5)
    except OSError:
        pass
    c.close()


ECHO = serve(echo)
SOURCE = serve(source)
toxi = Toxiproxy()
out = {"version": toxi.version().decode()}
toxi.destroy_all()
echo_proxy = toxi.create(upstream=f"127.0.0.1:{ECHO}", name="echo", listen="127.0.0.1:0")
src_proxy = toxi.create(upstream=f"127.0.0.1:{SOURCE}", name="source", listen="127.0.0.1:0")
out["listen_port_assigned"] = not echo_proxy.listen.endswith(":0")


def addr(p):
    host, port = p.listen.rsplit(":", 1)
    return host, int(port)


def rtt(size=64):
    """One request and its echo on a fresh connection; seconds."""
    s = socket.create_connection(addr(echo_proxy), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = random.randbytes(size)
    t0 = time.perf_counter()
    s.sendall(msg)
    got = b""
    while len(got) < size:
        d = s.recv(65536)
        if not d:
            break
        got += d
    dt = time.perf_counter() - t0
    s.close()
    assert got == msg, "echo through the proxy changed the data"
    return dt


def median_rtt(n=15):
    return statistics.median(rtt() for _ in range(n))


def fetch(n, mode="CLOSE", timeout=20):
    """Asks the source for n bytes; returns (bytes, seconds to the last byte, seconds to
    EOF or None, error name or None, number of recv calls)."""
    s = socket.create_connection(addr(src_proxy), timeout=timeout)
    t0 = time.perf_counter()
    s.sendall(f"SEND {n} {mode}\n".encode())
    got, last, eof, err, calls = 0, None, None, None, 0
    try:
        while True:
            d = s.recv(65536)
            calls += 1
            if not d:
                eof = time.perf_counter() - t0
                break
            got += len(d)
            last = time.perf_counter() - t0
            if mode == "KEEP" and got >= n:
                break
    except (ConnectionResetError, socket.timeout) as e:
        err = type(e).__name__
        eof = time.perf_counter() - t0
    s.close()
    return got, last, eof, err, calls


base = median_rtt()
out["base_rtt_ms"] = base * 1000

# latency: downstream and upstream, with jitter, then removed.
echo_proxy.add_toxic(type="latency", attributes={"latency": 200, "jitter": 0})
out["latency_down_added_ms"] = (median_rtt() - base) * 1000
echo_proxy.add_toxic(type="latency", stream="upstream", attributes={"latency": 100})
out["latency_both_added_ms"] = (median_rtt() - base) * 1000
echo_proxy.destroy_toxic("latency_upstream")
r = requests.post(
    f"{API}/proxies/echo/toxics/latency_downstream",
    json={"attributes": {"jitter": 50}},
)
out["update_merged"] = r.json()["attributes"]
samples = [(rtt() - base) * 1000 for _ in range(30)]
out["jitter_min_ms"], out["jitter_max_ms"] = min(samples), max(samples)
echo_proxy.destroy_toxic("latency_downstream")
out["latency_removed_added_ms"] = (median_rtt() - base) * 1000

# latency with toxicity 0.5: a share of connections (drawn per connection) is delayed.
echo_proxy.add_toxic(type="latency", name="half", toxicity=0.5, attributes={"latency": 150})
delayed = sum(1 for _ in range(40) if rtt() > base + 0.1)
out["toxicity_half_delayed_of_40"] = delayed
echo_proxy.destroy_toxic("half")

# A toxic added while a connection is open acts on it.
s = socket.create_connection(addr(echo_proxy), timeout=10)
s.sendall(b"a")
s.recv(10)
echo_proxy.add_toxic(type="latency", name="live", attributes={"latency": 200})
t0 = time.perf_counter()
s.sendall(b"b")
s.recv(10)
out["live_connection_added_ms"] = (time.perf_counter() - t0) * 1000
s.close()
echo_proxy.destroy_toxic("live")

# bandwidth: 1,000 KB/s (1 KB = 1000 bytes) downstream, 2,000,000 bytes.
src_proxy.add_toxic(type="bandwidth", attributes={"rate": 1000})
got, last, _, _, _ = fetch(2_000_000)
out["bandwidth_bytes"] = got
out["bandwidth_rate_kb_s"] = got / last / 1000
src_proxy.destroy_toxic("bandwidth_downstream")
got, last, _, _, _ = fetch(2_000_000)
out["unlimited_rate_kb_s"] = got / last / 1000

# slow_close: the server closes right after sending; the client sees EOF 300 ms later.
got, last, eof, _, _ = fetch(1000)
out["plain_close_after_data_ms"] = (eof - last) * 1000
src_proxy.add_toxic(type="slow_close", attributes={"delay": 300})
got, last, eof, _, _ = fetch(1000)
out["slow_close_after_data_ms"] = (eof - last) * 1000
out["slow_close_bytes"] = got
src_proxy.destroy_toxic("slow_close_downstream")

# timeout: no data gets through; the connection closes after 250 ms.
src_proxy.add_toxic(type="timeout", attributes={"timeout": 250})
got, last, eof, err, _ = fetch(1000, "KEEP")
out["timeout_bytes"], out["timeout_closed_ms"], out["timeout_error"] = got, eof * 1000, err
src_proxy.destroy_toxic("timeout_downstream")
# timeout 0: no data and no close (the client gives up after 1 s).
src_proxy.add_toxic(type="timeout", attributes={"timeout": 0})
got, last, eof, err, _ = fetch(1000, "KEEP", timeout=1)
out["timeout0_bytes"], out["timeout0_error"] = got, err
src_proxy.destroy_toxic("timeout_downstream")

# reset_peer: the first data back resets the connection.
src_proxy.add_toxic(type="reset_peer", attributes={"timeout": 0})
got, last, eof, err, _ = fetch(1000, "KEEP")
out["reset_bytes"], out["reset_error"] = got, err
src_proxy.destroy_toxic("reset_peer_downstream")
src_proxy.add_toxic(type="reset_peer", attributes={"timeout": 300})
got, last, eof, err, _ = fetch(1000, "KEEP")
out["reset_after_ms"], out["reset_after_error"] = eof * 1000, err
src_proxy.destroy_toxic("reset_peer_downstream")

# slicer: 20,000 bytes in pieces of about 100, 1 ms apart.
src_proxy.add_toxic(
    type="slicer", attributes={"average_size": 100, "size_variation": 20, "delay": 1000}
)
got, last, eof, err, calls = fetch(20_000)
out["slicer_bytes"], out["slicer_recv_calls"], out["slicer_ms"] = got, calls, last * 1000
src_proxy.destroy_toxic("slicer_downstream")

# limit_data: 1,000 bytes then the connection is closed.
src_proxy.add_toxic(type="limit_data", attributes={"bytes": 1000})
got, last, eof, err, _ = fetch(5000, "KEEP")
out["limit_bytes"], out["limit_closed"] = got, eof is not None
src_proxy.destroy_toxic("limit_data_downstream")

# down: the proxy disabled refuses connections; enabled again it works.
with echo_proxy.down():
    try:
        socket.create_connection(addr(echo_proxy), timeout=2).close()
        out["down_refused"] = False
    except ConnectionRefusedError:
        out["down_refused"] = True
    out["down_listed_enabled"] = toxi.get_proxy("echo").enabled
out["up_again_rtt_ms"] = median_rtt(5) * 1000
# A disable is in force when the API answers: a connection right after it is refused.
accepted_after_disable = 0
for _ in range(20):
    echo_proxy.disable()
    try:
        socket.create_connection(addr(echo_proxy), timeout=2).close()
        accepted_after_disable += 1
    except ConnectionRefusedError:
        pass
    echo_proxy.enable()
out["accepted_right_after_disable"] = accepted_after_disable
# faultline's `down` toxic: every connection closed at once.
echo_proxy.add_toxic(type="down", name="down")
try:
    out["down_toxic_echo"] = len(rtt().__repr__()) > 0 and "echoed"
except (AssertionError, ConnectionResetError, BrokenPipeError):
    out["down_toxic_echo"] = "closed"
echo_proxy.destroy_toxic("down")

# Errors, as Toxiproxy answers them.
errors = {}
try:
    toxi.create(upstream=f"127.0.0.1:{ECHO}", name="echo")
except ProxyExists:
    errors["duplicate_proxy"] = "ProxyExists"
r = requests.post(f"{API}/proxies", json={"name": "dup", "upstream": "x:1", "listen": echo_proxy.listen})
errors["busy_port"] = [r.status_code, r.json()]
r = requests.post(f"{API}/proxies", json={"name": "nameless"})
errors["missing_upstream"] = [r.status_code, r.json()]
r = requests.get(f"{API}/proxies/nope")
errors["unknown_proxy"] = [r.status_code, r.json()]
try:
    echo_proxy.add_toxic(type="gremlin")
except InvalidToxic as e:
    errors["unknown_toxic_type"] = json.loads(e.args[0])
echo_proxy.add_toxic(type="latency", name="once")
r = requests.post(f"{API}/proxies/echo/toxics", json={"type": "latency", "name": "once"})
errors["duplicate_toxic"] = [r.status_code, r.json()]
r = requests.delete(f"{API}/proxies/echo/toxics/never")
errors["unknown_toxic"] = [r.status_code, r.json()]
r = requests.post(f"{API}/proxies", data="{not json")
errors["bad_json"] = [r.status_code, r.json()["error"][:17]]
# An upstream nobody listens on: the client is accepted, then closed at once.
closed = socket.socket()
closed.bind(("127.0.0.1", 0))
dead_port = closed.getsockname()[1]
closed.close()
dead = toxi.create(upstream=f"127.0.0.1:{dead_port}", name="dead", listen="127.0.0.1:0")
s = socket.create_connection(addr(dead), timeout=5)
t0 = time.perf_counter()
try:
    errors["unreachable_upstream"] = ["closed", len(s.recv(10))]
except ConnectionResetError:
    errors["unreachable_upstream"] = ["reset", 0]
errors["unreachable_upstream_ms"] = (time.perf_counter() - t0) * 1000
s.close()
dead.destroy()
r = requests.get(f"{API}/proxies", headers={"User-Agent": "Mozilla/5.0 (X11; Linux)"})
errors["browser"] = [r.status_code, r.text.strip()]
out["errors"] = errors

# populate leaves matching proxies alone, replaces changed ones; reset clears toxics.
r = requests.post(
    f"{API}/populate",
    json=[
        {"name": "echo", "listen": echo_proxy.listen, "upstream": f"127.0.0.1:{ECHO}"},
        {"name": "extra", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{ECHO}"},
    ],
)
out["populate"] = [r.status_code, [p["name"] for p in r.json()["proxies"]]]
out["populate_kept_toxic"] = [t["name"] for t in requests.get(f"{API}/proxies/echo/toxics").json()]
r = requests.post(f"{API}/reset")
out["reset_status"] = r.status_code
out["after_reset_toxics"] = requests.get(f"{API}/proxies/echo/toxics").json()
out["proxies"] = sorted(toxi.proxies().keys())
r = requests.get(f"{API}/metrics")
out["metrics_has_bytes"] = 'faultline_proxy_bytes_total{proxy="echo",direction="upstream"}' in r.text
print(json.dumps(out))
