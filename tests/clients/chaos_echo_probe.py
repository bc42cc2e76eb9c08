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
