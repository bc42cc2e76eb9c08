#!/usr/bin/env bash
# Runs the example system and one chaos experiment against it.
#
#   examples/resilience/run.sh [chaostoolkit/pricing-timeout.json] [--no-breaker]
#
# Starts `faultline serve --fault-proxy 127.0.0.1:8474` on a fresh data directory (ports
# 4318 and 16686), the three services with the frontend reaching inventory and pricing
# through fault proxies, a load of 40 requests/s on GET /product, waits until the
# frontend's steady state holds, then runs the experiment with Chaos Toolkit (`chaos`,
# from the test venv: ./scripts/test creates .venv). Exit code: chaos's (0 held, 1 not).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$here/../.."
experiment="${1:-$here/chaostoolkit/pricing-timeout.json}"
breaker_flag="${2:-}"
py="${PYTHON:-$root/.venv/bin/python}"
chaos="$(dirname "$py")/chaos"
bin="${FAULTLINE_BIN:-$root/target/release/faultline}"
[ -x "$bin" ] || (cd "$root" && cargo build --release -q -p faultline)
data="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$data"; }
trap cleanup EXIT
"$bin" serve --data-dir "$data" --fault-proxy 127.0.0.1:8474 2>"$data/faultline.log" &
pids+=($!)
for _ in $(seq 100); do curl -fs localhost:16686/ready >/dev/null && break; sleep 0.1; done
start() {
    local role=$1
    shift
    "$py" "$here/services.py" "$role" "$@" > "$data/$role.port" 2>"$data/$role.log" &
    pids+=($!)
}
port_of() {
    for _ in $(seq 100); do [ -s "$data/$1.port" ] && break; sleep 0.1; done
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['port'])" "$data/$1.port"
}
listen() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['listen'])" "$1"; }
start inventory
start pricing
inv=$(port_of inventory)
pri=$(port_of pricing)
curl -fs -XPOST localhost:8474/proxies -d "{\"name\":\"inventory\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"127.0.0.1:$inv\"}" > "$data/inv.json"
curl -fs -XPOST localhost:8474/proxies -d "{\"name\":\"pricing\",\"listen\":\"127.0.0.1:0\",\"upstream\":\"127.0.0.1:$pri\"}" > "$data/pri.json"
start frontend --inventory "http://$(listen "$data/inv.json")" --pricing "http://$(listen "$data/pri.json")" $breaker_flag
front=$(port_of frontend)
"$py" "$here/load.py" "http://127.0.0.1:$front/product" 40 0 > /dev/null 2>&1 &
pids+=($!)
echo "waiting for the steady state of GET /product ..."
for _ in $(seq 60); do
    curl -fs "localhost:16686/api/v1/steady-state?service=frontend&operation=GET%20/product&window=10s&maxErrorRate=0.01&maxP99=300ms&minRequests=20" >/dev/null && break
    sleep 1
done
PYTHONPATH="$here" "$chaos" --no-version-check run --journal-path "$data/journal.json" "$experiment"
