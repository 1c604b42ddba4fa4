#!/usr/bin/env bash
# Starts a local 3-node berth cluster and shows its main job: a sandbox
# record created, the leader killed with kill -9, and the record still
# readable from the survivors. Leaves the cluster running; `berth down`
# (printed at the end) stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --workspace --bins --quiet
BIN="$CARGO_TARGET_DIR/debug"
export PATH="$BIN:$PATH"
export BERTH_HOME="${BERTH_HOME:-$PWD/.berth}"

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

berth down >/dev/null 2>&1 || true
run berth up
run berth sandbox create demo --image localhost/berth-demo:v1 --env GREETING=hello
run berth cluster status

leader=$(berth -o json cluster status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
pid=$(python3 -c "import json; print(next(n['pid'] for n in json.load(open('$BERTH_HOME/cluster.json'))['nodes'] if n['id'] == $leader))")
say "kill -9 $pid   # the leader, node $leader"
kill -9 "$pid"
start=$(date +%s%N)
until berth sandbox get demo >/dev/null 2>&1; do sleep 0.05; done
end=$(date +%s%N)
run berth sandbox get demo
run berth cluster status
echo
echo "demo: sandbox readable from the survivors $(( (end - start) / 1000000 )) ms after the leader was killed."
echo "demo: the cluster is still running (data in $BERTH_HOME); stop it with: $BIN/berth down --home $BERTH_HOME"
