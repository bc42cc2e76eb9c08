#!/usr/bin/env python3
"""Steady load for the example system: GET URL at RATE requests per second (open loop,
8 threads) for SECONDS (0: until killed). Prints one JSON line at the end: sent, by
status."""

import json
import sys
import threading
import time
import urllib.error
import urllib.request

url, rate, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
counts, lock = {}, threading.Lock()
start = time.monotonic()
stop_at = start + seconds if seconds > 0 else float("inf")


def worker(k, n):
    i = k
    while True:
        due = start + i / rate
        if due >= stop_at:
            return
        time.sleep(max(0.0, due - time.monotonic()))
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                r.read()
                key = str(r.status)
        except urllib.error.HTTPError as e:
            key = str(e.code)
        except Exception as e:
            key = type(e).__name__
        with lock:
            counts[key] = counts.get(key, 0) + 1
        i += n


threads = [threading.Thread(target=worker, args=(k, 8), daemon=True) for k in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"sent": sum(counts.values()), "status": counts}))
