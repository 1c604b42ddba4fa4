#!/usr/bin/env bash
# Starts a local berth cluster (3 control nodes + 1 agent with the Podman
# container driver) and shows its main job: a sandbox created from a
# locally built image, a file written into its /sandbox workspace, the
# leader killed with kill -9, the sandbox still running with the file
# intact, then an in-place image update v1 -> v2 on the same workspace.
# Leaves the cluster running; the last line says how to stop it.
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
wait_running() {
  for _ in $(seq 1 300); do
    [[ $(berth -o json sandbox get "$1" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])' 2>/dev/null) == Running ]] && return 0
    sleep 0.2
  done
  berth sandbox get "$1"; return 1
}

berth down >/dev/null 2>&1 || true
run berth up
berth sandbox delete demo >/dev/null 2>&1 || true
run berth sandbox create demo --image localhost/berth-demo:v1 --env GREETING=hello
wait_running demo
run berth sandbox get demo
run berth sandbox exec demo -- sh -c 'echo "written at $(date)" > /sandbox/notes.txt; cat /sandbox/notes.txt'
run berth cluster status

leader=$(berth -o json cluster status | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
pid=$(python3 -c "import json; print(next(n['pid'] for n in json.load(open('$BERTH_HOME/cluster.json'))['nodes'] if n['id'] == $leader))")
say "kill -9 $pid   # the leader, node $leader"
kill -9 "$pid"
start=$(date +%s%N)
until berth sandbox get demo >/dev/null 2>&1; do sleep 0.05; done
end=$(date +%s%N)
run berth cluster status
run berth sandbox get demo
run berth sandbox exec demo -- cat /sandbox/notes.txt
run berth sandbox update demo --image localhost/berth-demo:v2 --min-healthy 2s --wait
run berth sandbox exec demo -- cat /etc/berth-demo-version /sandbox/notes.txt
run berth sandbox history demo
echo
echo "demo: the sandbox kept running and its workspace is intact; it was readable from the survivors $(( (end - start) / 1000000 )) ms after the leader was killed, and it was updated to v2 on the same workspace."
echo "demo: the cluster is still running (data in $BERTH_HOME). Try: berth sandbox logs demo; berth node list."
echo "demo: stop it with: $BIN/berth down --home $BERTH_HOME   (sandbox containers keep running; berth sandbox delete demo removes it)"
