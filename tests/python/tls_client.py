"""An independent gRPC client (Python grpcio) for the TLS and credential
tests: calls one method with the given TLS identity and token and prints
the gRPC status code it got (OK or the error's name).

usage: tls_client.py ADDRESS CA|- CERT|- KEY|- TOKEN|- CALL
CALL: report POOL MEMBER | status | set-member POOL MEMBER ADMIN | ring-table
"""

import os
import shutil
import subprocess
import sys
import tempfile
import atexit

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stubs():
    out = tempfile.mkdtemp(prefix="vnamed-py-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    protos = [os.path.join("vnamed", "v1", p) for p in ("admin.proto", "status.proto", "ring.proto")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.join(ROOT, "proto"),
         f"--python_out={out}", f"--grpc_python_out={out}", *protos],
        check=True,
    )
    sys.path.insert(0, out)
    from vnamed.v1 import admin_pb2, admin_pb2_grpc, status_pb2, status_pb2_grpc, ring_pb2, ring_pb2_grpc
    return admin_pb2, admin_pb2_grpc, status_pb2, status_pb2_grpc, ring_pb2, ring_pb2_grpc


def read(path):
    if path == "-":
        return None
    with open(path, "rb") as f:
        return f.read()


def main():
    address, ca, cert, key, token = sys.argv[1:6]
    call = sys.argv[6:]
    admin_pb2, admin_grpc, status_pb2, status_grpc, ring_pb2, ring_grpc = stubs()
    if ca == "-":
        channel = grpc.insecure_channel(address)
    else:
        creds = grpc.ssl_channel_credentials(root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
        # The test's server certificate is for vnamed.test, whatever its address.
        channel = grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", "vnamed.test")])
    metadata = [("authorization", f"Bearer {token}")] if token != "-" else []
    try:
        if call[0] == "report":
            report = status_pb2.MemberReport(pool=call[1], member=call[2], up=True, metrics={"load": 0.5}, check="python-tls")
            status_grpc.StatusStub(channel).Report(status_pb2.ReportBatch(source="python", reports=[report]), metadata=metadata, timeout=5)
        elif call[0] == "status":
            admin_grpc.AdminStub(channel).Status(admin_pb2.StatusRequest(), metadata=metadata, timeout=5)
        elif call[0] == "set-member":
            req = admin_pb2.SetMemberRequest(pool=call[1], member=call[2], admin=call[3])
            admin_grpc.AdminStub(channel).SetMember(req, metadata=metadata, timeout=5)
        elif call[0] == "ring-table":
            ring_grpc.RingStub(channel).Table(ring_pb2.TableRequest(), metadata=metadata, timeout=5)
        else:
            raise SystemExit(f"unknown call {call}")
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name)


if __name__ == "__main__":
    main()
