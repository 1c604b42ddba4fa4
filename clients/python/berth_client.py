"""A berth API client in Python (grpcio), over TLS with a bearer token.

It compiles berth's .proto files at start-up (grpcio-tools), so it needs
nothing generated ahead of time:

    pip install -r clients/python/requirements.txt
    python3 clients/python/berth_client.py --home .berth demo-py

`--home` is the BERTH_HOME `berth up` used: its `tls/ca.pem` is the CA to
trust and its `token` the bearer token. Control nodes present the identity
`server.<cluster>.berth`, not their address, so the client checks that name
(`grpc.ssl_target_name_override`).

It creates a sandbox, reads it back, lists, and deletes it, printing one
JSON line per step.
"""

import argparse
import importlib
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")


def load_stubs():
    """Compiles berth's API protos into a temporary package and imports them."""
    out = tempfile.mkdtemp(prefix="berth-py-")
    files = ["berth/v1/sandbox.proto", "berth/v1/cluster.proto", "berth/v1/auth.proto"]
    code = protoc.main(
        ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + [os.path.join(PROTO_ROOT, f) for f in files]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    sys.path.insert(0, out)
    modules = {}
    for name in ["sandbox", "cluster", "auth"]:
        modules[name] = importlib.import_module(f"berth.v1.{name}_pb2")
        modules[name + "_grpc"] = importlib.import_module(f"berth.v1.{name}_pb2_grpc")
    return modules


def cluster_name(home):
    try:
        with open(os.path.join(home, "tls", "cluster")) as f:
            return f.read().strip() or "berth"
    except OSError:
        return "berth"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="name of the sandbox to create and delete")
    parser.add_argument("--home", default=os.environ.get("BERTH_HOME", ".berth"))
    parser.add_argument("--control", default="127.0.0.1:7001")
    parser.add_argument("--image", default="localhost/berth-demo:v1")
    args = parser.parse_args()

    pb = load_stubs()
    with open(os.path.join(args.home, "tls", "ca.pem"), "rb") as f:
        ca = f.read()
    token = os.environ.get("BERTH_TOKEN")
    if not token:
        with open(os.path.join(args.home, "token")) as f:
            token = f.read().strip()
    creds = grpc.ssl_channel_credentials(root_certificates=ca)
    server = f"server.{cluster_name(args.home)}.berth"
    channel = grpc.secure_channel(
        args.control, creds, options=[("grpc.ssl_target_name_override", server)]
    )
    metadata = [("authorization", f"Bearer {token}")]
    access = pb["auth_grpc"].AccessServiceStub(channel)
    sandboxes = pb["sandbox_grpc"].SandboxServiceStub(channel)

    def say(step, **fields):
        print(json.dumps({"step": step, **fields}), flush=True)

    me = access.WhoAmI(pb["auth"].WhoAmIRequest(), metadata=metadata, timeout=30)
    say("whoami", tenant=me.tenant, role=me.role)
    spec = pb["sandbox"].SandboxSpec(image=args.image)
    created = sandboxes.CreateSandbox(
        pb["sandbox"].CreateSandboxRequest(name=args.name, spec=spec),
        metadata=metadata,
        timeout=30,
    )
    say("create", name=created.name, uid=created.uid, tenant=created.tenant)
    got = sandboxes.GetSandbox(
        pb["sandbox"].GetSandboxRequest(name=args.name), metadata=metadata, timeout=30
    )
    say("get", name=got.name, uid=got.uid)
    listed = sandboxes.ListSandboxes(
        pb["sandbox"].ListSandboxesRequest(), metadata=metadata, timeout=30
    )
    say("list", names=sorted(s.name for s in listed.sandboxes))
    sandboxes.DeleteSandbox(
        pb["sandbox"].DeleteSandboxRequest(name=args.name), metadata=metadata, timeout=30
    )
    say("delete", name=args.name)
    try:
        sandboxes.GetSandbox(
            pb["sandbox"].GetSandboxRequest(name="x"),
            metadata=[("authorization", "Bearer berth_00_00")],
            timeout=30,
        )
        say("bad-token", code="OK")
    except grpc.RpcError as e:
        say("bad-token", code=e.code().name)


if __name__ == "__main__":
    main()
