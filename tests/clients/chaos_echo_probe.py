"""A Chaos Toolkit probe (python provider) for tests/clients/chaostoolkit_run.py: the
median round trip, in ms, of a small echo through a proxy of the Toxiproxy-compatible
API named in the experiment's configuration."""

import socket
import statistics
import time

import requests


def rtt_ms(proxy: str, samples: int = 7, configuration: dict = None) -> float:
    api = "http://{}:{}".format(
        configuration["toxiproxy_host"], configuration["toxiproxy_port"]
    )
    host, port = requests.get(f"{api}/proxies/{proxy}").json()["listen"].rsplit(":", 1)
    times = []
    for _ in range(samples):
        s = socket.create_connection((host, int(port)), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(b"ping")
        got = b""
        while len(got) < 4:
            d = s.recv(16)
            if not d:
                break
            got += d
        times.append((time.perf_counter() - t0) * 1000)
        s.close()
    return statistics.median(times)


def _addr(proxy, configuration):
    api = "http://{}:{}".format(
        configuration["toxiproxy_host"], configuration["toxiproxy_port"]
    )
    host, port = requests.get(f"{api}/proxies/{proxy}").json()["listen"].rsplit(":", 1)
    return host, int(port)


def transfer_kbps(proxy: str, size: int = 200_000, configuration: dict = None) -> float:
    """KB/s (1 KB = 1000 bytes) of `size` bytes echoed back through the proxy."""
    import threading

    s = socket.create_connection(_addr(proxy, configuration), timeout=30)
    data = bytes(size)
    threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
    t0 = time.perf_counter()
    got = 0
    while got < size:
        d = s.recv(65536)
        if not d:
            break
        got += len(d)
    dt = time.perf_counter() - t0
    s.close()
    return got / dt / 1000


def echo_received(proxy: str, size: int = 100, configuration: dict = None) -> int:
    """Bytes echoed back before the connection closed (or 2 s passed)."""
    s = socket.create_connection(_addr(proxy, configuration), timeout=2)
    s.sendall(bytes(size))
    got = 0
    try:
        while got < size:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
    except socket.timeout:
        pass
    s.close()
    return got


def closed_after_ms(proxy: str, configuration: dict = None) -> float:
    """Milliseconds until the proxy closes a connection that sent one byte (or -1 after
    5 s)."""
    s = socket.create_connection(_addr(proxy, configuration), timeout=5)
    t0 = time.perf_counter()
    s.sendall(b"x")
    try:
        while s.recv(16):
            pass
        return (time.perf_counter() - t0) * 1000
    except socket.timeout:
        return -1.0
    finally:
        s.close()


def recv_calls(proxy: str, size: int = 5000, configuration: dict = None) -> int:
    """recv() calls needed to get `size` echoed bytes back."""
    s = socket.create_connection(_addr(proxy, configuration), timeout=10)
    s.sendall(bytes(size))
    got, calls = 0, 0
    while got < size:
        d = s.recv(65536)
        calls += 1
        if not d:
            break
        got += len(d)
    s.close()
    return calls


def eof_after_shutdown_ms(proxy: str, configuration: dict = None) -> float:
    """Milliseconds from the client's half-close to the end of the echo stream."""
    s = socket.create_connection(_addr(proxy, configuration), timeout=5)
    s.sendall(b"x")
    s.recv(16)
    t0 = time.perf_counter()
    s.shutdown(socket.SHUT_WR)
    while s.recv(16):
        pass
    s.close()
    return (time.perf_counter() - t0) * 1000
