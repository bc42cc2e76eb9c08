"""Runs two Chaos Toolkit experiments with the chaostoolkit-toxiproxy driver against a
Toxiproxy-compatible API (faultline proxy), unmodified: `chaos run` as a user would.

Usage: chaostoolkit_run.py API_PORT WORK_DIR

An echo server in this process is the upstream. Experiment "holds" adds 50 ms of latency
(the hypothesis allows 150 ms) and also drives the driver's proxy actions (create,
disable, read an attribute, enable, delete); experiment "breaks" adds 300 ms. Both roll
the toxic back. Prints one JSON object: each journal's status, deviation, the probe
outputs of the method, and what the API shows afterwards.
"""

import json
import os
import subprocess
import sys

import requests

from tcp_servers import echo, serve

API_PORT = int(sys.argv[1])
WORK = sys.argv[2]
API = f"http://127.0.0.1:{API_PORT}"
HERE = os.path.dirname(os.path.abspath(__file__))


ECHO = serve(echo)
requests.post(
    f"{API}/proxies",
    json={"name": "echo", "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{ECHO}"},
).raise_for_status()


def toxi(func, module="chaostoxi.toxic.actions", **arguments):
    return {"type": "action", "name": f"{func}-{arguments.get('toxic_name', '')}",
            "provider": {"type": "python", "module": module, "func": func,
                         "arguments": arguments}}


def measure(name, func, **arguments):
    return {"type": "probe", "name": name,
            "provider": {"type": "python", "module": "chaos_echo_probe", "func": func,
                         "arguments": dict(proxy="extra", **arguments)}}


def every_toxic():
    """Each toxic of the driver's helpers added to proxy extra, its effect measured, and
    removed with the driver's delete_toxic."""
    steps = []
    for create, measured in [
        (dict(func="create_bandwith_degradation_toxic", toxic_name="bw", rate=100),
         measure("bandwidth-kbps", "transfer_kbps", size=200_000)),
        (dict(func="create_limiter_toxic", toxic_name="limit", bytes_limit=10),
         measure("limit-bytes", "echo_received", size=100)),
        (dict(func="create_timeout_toxic", toxic_name="to", timeout=300),
         measure("timeout-closed-ms", "closed_after_ms")),
        (dict(func="create_slicer_toxic", toxic_name="slice", average_size=50,
              size_variation=10, delay=500),
         measure("slicer-recv-calls", "recv_calls", size=5000)),
        (dict(func="create_slow_connection_close_toxic", toxic_name="slowclose", delay=300),
         measure("slow-close-eof-ms", "eof_after_shutdown_ms")),
    ]:
        name = create["toxic_name"]
        steps.append(toxi(for_proxy="extra", **create))
        steps.append(measured)
        steps.append(toxi("delete_toxic", for_proxy="extra", toxic_name=name))
    steps.append(measure("after-all-removed-kbps", "transfer_kbps", size=200_000))
    return steps


def experiment(latency_ms):
    rtt = {
        "type": "probe",
        "name": "echo-round-trip-ms",
        "provider": {
            "type": "python",
            "module": "chaos_echo_probe",
            "func": "rtt_ms",
            "arguments": {"proxy": "echo"},
        },
    }
    return {
        "title": f"The echo service answers within 150 ms with {latency_ms} ms of latency",
        "description": "faultline proxy driven by chaostoolkit-toxiproxy",
        "configuration": {"toxiproxy_host": "127.0.0.1", "toxiproxy_port": API_PORT},
        "steady-state-hypothesis": {
            "title": "echo is fast",
            "probes": [
                {
                    "type": "probe",
                    "name": "echo-proxy-exists",
                    "tolerance": True,
                    "provider": {
                        "type": "python",
                        "module": "chaostoxi.proxy.probes",
                        "func": "proxy_exist",
                        "arguments": {"proxy_name": "echo"},
                    },
                },
                dict(rtt, tolerance={"type": "range", "range": [0, 150]}),
            ],
        },
        "method": [
            {
                "type": "action",
                "name": "add-latency",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.toxic.actions",
                    "func": "create_latency_toxic",
                    "arguments": {
                        "for_proxy": "echo",
                        "toxic_name": "slow-echo",
                        "latency": latency_ms,
                    },
                },
            },
            rtt,
            {
                "type": "action",
                "name": "create-extra-proxy",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.proxy.actions",
                    "func": "create_proxy",
                    "arguments": {
                        "proxy_name": "extra",
                        "upstream_host": "127.0.0.1",
                        "upstream_port": ECHO,
                        "listen_host": "127.0.0.1",
                        "listen_port": 0,
                    },
                },
            },
            *every_toxic(),
            {
                "type": "action",
                "name": "disable-extra",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.proxy.actions",
                    "func": "disable_proxy",
                    "arguments": {"proxy_name": "extra"},
                },
            },
            {
                "type": "probe",
                "name": "extra-enabled",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.proxy.probes",
                    "func": "get_proxy_attribute",
                    "arguments": {"proxy_name": "extra", "attribute": "enabled"},
                },
            },
            {
                "type": "action",
                "name": "enable-extra",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.proxy.actions",
                    "func": "enable_proxy",
                    "arguments": {"proxy_name": "extra"},
                },
            },
            {
                "type": "action",
                "name": "delete-extra",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.proxy.actions",
                    "func": "delete_proxy",
                    "arguments": {"proxy_name": "extra"},
                },
            },
        ],
        "rollbacks": [
            {
                "type": "action",
                "name": "remove-latency",
                "provider": {
                    "type": "python",
                    "module": "chaostoxi.toxic.actions",
                    "func": "delete_toxic",
                    "arguments": {"for_proxy": "echo", "toxic_name": "slow-echo"},
                },
            }
        ],
    }


out = {}
chaos = os.path.join(os.path.dirname(sys.executable), "chaos")
env = dict(os.environ, PYTHONPATH=HERE)
for name, latency in [("holds", 50), ("breaks", 300)]:
    exp_path = os.path.join(WORK, f"{name}.json")
    journal_path = os.path.join(WORK, f"{name}-journal.json")
    with open(exp_path, "w") as f:
        json.dump(experiment(latency), f)
    run = subprocess.run(
        [chaos, "--no-version-check", "--log-file", os.path.join(WORK, f"{name}.log"),
         "run", "--journal-path", journal_path, exp_path],
        env=env, cwd=WORK, capture_output=True, text=True, timeout=120,
    )
    journal = json.load(open(journal_path))
    method = {r["activity"]["name"]: r.get("output") for r in journal["run"]}
    out[name] = {
        "exit": run.returncode,
        "status": journal["status"],
        "deviated": journal["deviated"],
        "method_rtt_ms": method.get("echo-round-trip-ms"),
        "extra_enabled_while_disabled": method.get("extra-enabled"),
        "toxics": {k: method.get(k) for k in [
            "bandwidth-kbps", "limit-bytes", "timeout-closed-ms", "slicer-recv-calls",
            "slow-close-eof-ms", "after-all-removed-kbps"]},
        "failed_activities": [
            r["activity"]["name"] for r in journal["run"] if r["status"] != "succeeded"
        ],
        "rollbacks": [r["status"] for r in journal["rollbacks"]],
        "toxics_after": requests.get(f"{API}/proxies/echo/toxics").json(),
        "proxies_after": sorted(requests.get(f"{API}/proxies").json()),
    }
print(json.dumps(out))
