"""An independent gRPC client for vnamed, written against the published
.proto files only: pushes a status report, reads the pool snapshot, checks
the standard health service and lists the services by reflection.

usage: client.py ADDRESS TOKEN POOL MEMBER LOAD
Prints one JSON object with what it saw.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    out = tempfile.mkdtemp(prefix="vnamed-py-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    protos = [os.path.join("vnamed", "v1", p) for p in ("admin.proto", "status.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    from vnamed.v1 import admin_pb2, admin_pb2_grpc, status_pb2, status_pb2_grpc
    return admin_pb2, admin_pb2_grpc, status_pb2, status_pb2_grpc


def main():
    address, token, pool, member, load = sys.argv[1:6]
    admin_pb2, admin_grpc, status_pb2, status_grpc = stubs()
    channel = grpc.insecure_channel(address)
    auth = [("authorization", f"Bearer {token}")]
    seen = {}

    report = status_pb2.MemberReport(pool=pool, member=member, up=True, metrics={"load": float(load)}, check="python")
    reply = status_grpc.StatusStub(channel).Report(status_pb2.ReportBatch(source="python", reports=[report]), metadata=auth)
    seen["accepted"] = reply.accepted

    try:
        status_grpc.StatusStub(channel).Report(status_pb2.ReportBatch(source="python", reports=[report]))
        seen["without_token"] = "OK"
    except grpc.RpcError as e:
        seen["without_token"] = e.code().name

    snapshot = admin_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), metadata=auth)
    seen["pools"] = [
        {"name": p.name, "answer": list(p.answer),
         "members": {m.id: {"state": m.state, "load": m.load if m.HasField("load") else None} for m in p.members}}
        for p in snapshot.pools
    ]

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="vnamed.v1.Status"))
    seen["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)

    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    seen["services"] = sorted(s.name for a in answers for s in a.list_services_response.service)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
