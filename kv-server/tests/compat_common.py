"""What the Python grpcio compatibility tests share: stub generation and checks.

Imported by compat_python.py, compat_python_shardmaster.py and compat_python_replicas.py (same
folder, so on sys.path when each runs as a script). Needs the grpcio and grpcio-tools packages.
"""

import importlib
import pathlib
import subprocess
import sys

import grpc

PROTO_DIR = pathlib.Path(__file__).resolve().parents[2] / "kv-proto" / "proto"
RPC_TIMEOUT = 30  # seconds; an upper bound against hangs, never a speed check


class Mismatch(Exception):
    pass


def check(actual, expected, what):
    if actual != expected:
        raise Mismatch(f"{what}: expected {expected!r}, got {actual!r}")


def expect_error(call, code, what):
    """Runs call(), which must fail with the gRPC status code `code`."""
    try:
        call()
    except grpc.RpcError as err:
        check(err.code(), code, what)
        return
    raise Mismatch(f"{what}: expected {code}, the call succeeded")


def generate_stubs(out_dir, proto):
    """Compiles kv-proto/proto/<proto>.proto into out_dir and imports the generated modules."""
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(PROTO_DIR / f"{proto}.proto"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}): {result.stderr}")
    sys.path.insert(0, str(out_dir))
    return importlib.import_module(f"{proto}_pb2"), importlib.import_module(f"{proto}_pb2_grpc")
