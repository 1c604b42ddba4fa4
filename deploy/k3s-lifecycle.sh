#!/usr/bin/env bash
# berth on a real k3s (or any Kubernetes) cluster, end to end: installs
# berth from deploy/kubernetes, then walks one sandbox through its life and
# checks every step, through the berth CLI and with kubectl:
#
#   certificates and Secrets -> apply -> berthd and agents ready
#   -> every Kubernetes node is a Ready berth node, named as in Kubernetes
#   -> create a sandbox, write /sandbox/lifecycle.txt
#   -> update its image: same PVC, the file survived
#   -> roll back: the first image again, the file still there
#   -> delete --keep-volume: the PVC stays; `berth volume delete` removes it
#   -> a second sandbox, deleted without --keep-volume: its PVC goes away
#
# Needs: kubectl (pointing at the cluster, with rights to create
# namespaces and RBAC), berth (the CLI) and jq on PATH; the images
# localhost/berthd:VERSION and localhost/berth-agent:VERSION loaded on
# every node, and two sandbox images (default: berth's demo image, v1 and
# v2) loaded too; deploy/README.md ("Kubernetes (k3s)") says how.
#
# Settings (environment):
#   BERTH_PKI          certificate dir (default ./berth-pki); made with
#                      `berth certs init` if missing. It must hold the CA
#                      key: the script issues a certificate for every node
#                      and a platform-admin client certificate for itself.
#   SANDBOX_IMAGE_V1   default localhost/berth-demo:v1
#   SANDBOX_IMAGE_V2   default localhost/berth-demo:v2
#   LOCAL_PORT         local end of the port-forward (default 17001)
#   TIMEOUT            seconds to wait for each step (default 300)
#
# Exits non-zero at the first failed check, saying which. Safe to re-run:
# it keeps existing certificates, updates the Secrets and re-applies the
# manifests; each run uses new sandbox names.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
manifests="$here/kubernetes"
pki="${BERTH_PKI:-./berth-pki}"
image_v1="${SANDBOX_IMAGE_V1:-localhost/berth-demo:v1}"
image_v2="${SANDBOX_IMAGE_V2:-localhost/berth-demo:v2}"
port="${LOCAL_PORT:-17001}"
timeout="${TIMEOUT:-300}"
sys=berth-system
sandboxes=berth-sandboxes
run_id="$(date +%s)"
keep_name="lc-keep-$run_id"
drop_name="lc-drop-$run_id"

checks=0
step() { printf '\n==> %s\n' "$*"; }
ok() { checks=$((checks + 1)); printf '    ok: %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

for tool in kubectl berth jq; do
  command -v "$tool" >/dev/null || fail "$tool is not on PATH"
done
kubectl version >/dev/null 2>&1 || fail "kubectl cannot reach a cluster (check KUBECONFIG)"

# ---- certificates and Secrets ----------------------------------------

step "certificates in $pki"
if [[ ! -f $pki/ca.pem ]]; then
  berth certs init --dir "$pki" --cluster berth
fi
[[ -f $pki/ca-key.pem ]] || fail "$pki has no ca-key.pem: this script issues certificates"
[[ $(cat "$pki/cluster") == berth ]] \
  || fail "$pki is a CA for cluster '$(cat "$pki/cluster")'; the manifests say --tls-cluster berth"
[[ -f $pki/server-berthd.pem ]] || berth certs issue server berthd --dir "$pki"
if [[ ! -f $pki/data-key ]]; then
  (umask 077 && printf '1:%s\n' "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$pki/data-key")
fi
mapfile -t nodes < <(kubectl get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
((${#nodes[@]} > 0)) || fail "the cluster has no nodes"
for node in "${nodes[@]}"; do
  [[ -f $pki/agent-$node.pem ]] || berth certs issue agent "$node" --dir "$pki"
done
[[ -f $pki/client-k3s-lifecycle.pem ]] \
  || berth certs issue client k3s-lifecycle --dir "$pki" --tenant default --role platform-admin
ok "CA, server, ${#nodes[@]} agent and client certificates"

step "namespaces and Secrets"
kubectl apply -f "$manifests/00-namespaces.yaml"
apply_secret() { kubectl -n "$sys" create secret generic "$@" --dry-run=client -o yaml | kubectl apply -f -; }
apply_secret berthd-tls \
  --from-file=ca.pem="$pki/ca.pem" \
  --from-file=server.pem="$pki/server-berthd.pem" \
  --from-file=server-key.pem="$pki/server-berthd-key.pem"
apply_secret berthd-data-key --from-file=data-key="$pki/data-key"
agent_files=(--from-file=ca.pem="$pki/ca.pem")
for node in "${nodes[@]}"; do
  agent_files+=(--from-file="$node.pem=$pki/agent-$node.pem" --from-file="$node-key.pem=$pki/agent-$node-key.pem")
done
apply_secret berth-agent-tls "${agent_files[@]}"
ok "Secrets berthd-tls, berthd-data-key, berth-agent-tls"

# ---- install ------------------------------------------------------------

step "apply $manifests"
kubectl apply -f "$manifests"
kubectl -n "$sys" rollout status statefulset/berthd --timeout="${timeout}s" \
  || fail "berthd did not become ready (kubectl -n $sys logs berthd-0)"
ok "berthd StatefulSet ready"
kubectl -n "$sys" rollout status daemonset/berth-agent --timeout="${timeout}s" \
  || fail "berth-agent did not become ready (kubectl -n $sys logs -l app.kubernetes.io/name=berth-agent)"
ok "berth-agent DaemonSet ready"

# ---- the CLI through a port-forward ---------------------------------------

step "port-forward svc/berth to 127.0.0.1:$port"
scratch="$(mktemp -d)"
kubectl -n "$sys" port-forward svc/berth "$port:7001" >"$scratch/port-forward.log" 2>&1 &
pf_pid=$!
cleanup() {
  kill "$pf_pid" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT

export BERTH_CONTROL="127.0.0.1:$port"
export BERTH_CA="$pki/ca.pem" BERTH_CERT="$pki/client-k3s-lifecycle.pem" BERTH_KEY="$pki/client-k3s-lifecycle-key.pem"
export BERTH_CLUSTER=berth
# The client certificate is the credential: no token from the environment
# or from a `berth up` home (a bad token is refused even beside a good
# certificate).
export BERTH_HOME="$scratch/home"
unset BERTH_TOKEN BERTH_TENANT

# until_ok WHAT CMD...: retries CMD once a second; after TIMEOUT, fails
# saying WHAT, after the output of `diagnose` (set per check) if any.
diagnose=()
until_ok() {
  local what=$1 deadline=$((SECONDS + timeout))
  shift
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      ((${#diagnose[@]} == 0)) || "${diagnose[@]}" >&2 || true
      fail "$what (waited ${timeout}s)"
    fi
    sleep 1
  done
  diagnose=()
}
has_leader() { [[ $(berth -o json cluster status | jq -r '.leader // empty') != "" ]]; }
diagnose=(cat "$scratch/port-forward.log")
until_ok "the control plane has no leader" has_leader
ok "berthd has a leader: $(berth -o json cluster status | jq -c '{leader, term, members: [.members[].addr]}')"

nodes_ready() {
  local ready
  ready="$(berth -o json node list | jq -r '.[] | select(.ready) | .name' | sort)"
  [[ $ready == "$(printf '%s\n' "${nodes[@]}" | sort)" ]]
}
diagnose=(berth node list)
until_ok "the Ready berth nodes are not exactly the Kubernetes nodes" nodes_ready
ok "every Kubernetes node is a Ready berth node of the same name: ${nodes[*]}"

# ---- one sandbox's life -----------------------------------------------------

get() { berth -o json sandbox get "$1"; }
field() { get "$1" | jq -r "$2"; }
is_running() { [[ $(field "$1" .phase) == Running ]]; }
wait_running() {
  diagnose=(berth sandbox get "$1")
  until_ok "$1 is not Running$2" is_running "$1"
}
pvc_uid() { kubectl -n "$sandboxes" get pvc "$1" -o jsonpath='{.metadata.uid}'; }
pvc_gone() { ! kubectl -n "$sandboxes" get pvc "$1" >/dev/null 2>&1; }

step "create $keep_name ($image_v1)"
berth sandbox create "$keep_name" --image "$image_v1"
wait_running "$keep_name" ""
volume="$(field "$keep_name" .volume)"
node="$(field "$keep_name" .node)"
[[ -n $volume ]] || fail "$keep_name has no volume"
uid_before="$(pvc_uid "$volume")" || fail "no PVC $volume in $sandboxes"
ok "Running on node $node with PVC $volume"

marker="written by k3s-lifecycle $run_id"
berth sandbox exec "$keep_name" -- sh -c "echo '$marker' > /sandbox/lifecycle.txt" \
  || fail "exec into $keep_name failed"
[[ $(berth sandbox exec "$keep_name" -- cat /sandbox/lifecycle.txt) == "$marker" ]] \
  || fail "/sandbox/lifecycle.txt does not hold what was written"
ok "wrote /sandbox/lifecycle.txt through berth sandbox exec"

step "update $keep_name to $image_v2"
berth sandbox update "$keep_name" --image "$image_v2" --wait || fail "the update did not succeed"
[[ $(field "$keep_name" .image) == "$image_v2" ]] || fail "the image is not $image_v2"
[[ $(field "$keep_name" .volume) == "$volume" ]] || fail "the sandbox's volume changed"
[[ $(pvc_uid "$volume") == "$uid_before" ]] || fail "PVC $volume was replaced"
wait_running "$keep_name" " after the update"
[[ $(berth sandbox exec "$keep_name" -- cat /sandbox/lifecycle.txt) == "$marker" ]] \
  || fail "the file did not survive the update"
ok "revision $(field "$keep_name" .revision) runs $image_v2 on the same PVC; the file survived"

step "roll $keep_name back"
berth sandbox rollback "$keep_name" --wait || fail "the rollback did not complete"
[[ $(field "$keep_name" .image) == "$image_v1" ]] || fail "the image is not $image_v1 after the rollback"
[[ $(pvc_uid "$volume") == "$uid_before" ]] || fail "PVC $volume was replaced by the rollback"
wait_running "$keep_name" " after the rollback"
[[ $(berth sandbox exec "$keep_name" -- cat /sandbox/lifecycle.txt) == "$marker" ]] \
  || fail "the file did not survive the rollback"
ok "back on $image_v1; same PVC; the file survived"

step "delete $keep_name --keep-volume"
berth sandbox delete "$keep_name" --keep-volume || fail "delete --keep-volume failed"
[[ $(pvc_uid "$volume") == "$uid_before" ]] || fail "PVC $volume is gone after delete --keep-volume"
kept() { berth -o json volume list | jq -e --arg v "$volume" 'any(.[]; .volume == $v)'; }
diagnose=(berth volume list)
until_ok "berth volume list does not show $volume" kept
ok "PVC $volume kept and listed as a kept volume"
berth volume delete "$volume" || fail "berth volume delete $volume failed"
until_ok "PVC $volume still exists after berth volume delete" pvc_gone "$volume"
ok "berth volume delete removed PVC $volume"

step "create and delete $drop_name (no --keep-volume)"
berth sandbox create "$drop_name" --image "$image_v1"
wait_running "$drop_name" ""
drop_volume="$(field "$drop_name" .volume)"
kubectl -n "$sandboxes" get pvc "$drop_volume" >/dev/null || fail "no PVC $drop_volume"
ok "Running with PVC $drop_volume"
berth sandbox delete "$drop_name" || fail "delete failed"
until_ok "PVC $drop_volume still exists after delete" pvc_gone "$drop_volume"
ok "delete removed PVC $drop_volume"

printf '\nall %d checks passed\n' "$checks"
