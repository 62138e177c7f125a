#!/usr/bin/env python3
"""The course assignment's storage tests, as a plain grpcio client of the KVStore service.

Usage: compat_python.py HOST:PORT

Generates the Python stubs from kv-proto/proto/kvstore.proto into a temporary directory with
grpc_tools.protoc, connects with grpc.insecure_channel as the assignment's clients do, and runs the
sequence test, the parallel test (3 clients) and the race test (3 clients x 5 appends). Exits 0 if
every check passes, and non-zero with a message on the first mismatch or error.

Run by tests/compat_python.rs against a fresh server: it assumes the keys it uses are missing.
Needs the grpcio and grpcio-tools packages.
"""

import sys
import tempfile
import threading

import grpc

from compat_common import RPC_TIMEOUT, Mismatch, check, generate_stubs

THREAD_TIMEOUT = 120


class Client:
    """One connection, as each of the assignment's clients has; None stands for a missing value."""

    def __init__(self, addr, pb2, pb2_grpc):
        self.pb2 = pb2
        self.channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(self.channel).result(timeout=RPC_TIMEOUT)
        self.stub = pb2_grpc.KVStoreStub(self.channel)

    def close(self):
        self.channel.close()

    @staticmethod
    def _value(response):
        # proto3 `optional`: presence tells a missing key from "".
        return response.value if response.HasField("value") else None

    def get(self, key):
        return self._value(self.stub.Get(self.pb2.GetRequest(key=key), timeout=RPC_TIMEOUT))

    def lpop(self, key):
        return self._value(self.stub.LPop(self.pb2.GetRequest(key=key), timeout=RPC_TIMEOUT))

    def rpop(self, key):
        return self._value(self.stub.RPop(self.pb2.GetRequest(key=key), timeout=RPC_TIMEOUT))

    def put(self, key, value):
        self.stub.Put(self.pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT)

    def append(self, key, value):
        self.stub.Append(self.pb2.AppendRequest(key=key, value=value), timeout=RPC_TIMEOUT)


def sequence_test(client):
    check(client.get(10), None, "get(10)")
    client.put(33, "?!?!?")
    check(client.get(33), "?!?!?", "get(33) after put")
    client.append(45, "huh?")
    check(client.get(45), "huh?", "get(45) after append to a missing key")
    client.put(45, "huh!")
    check(client.get(45), "huh!", "get(45) after put")
    client.append(45, "?")
    check(client.get(45), "huh!?", "get(45) after append")
    check(client.lpop(3), None, "lpop(3) of a missing key")
    for op, expected in [("lpop", "h"), ("rpop", "?"), ("lpop", "u"), ("rpop", "!"), ("rpop", "h"), ("lpop", "")]:
        check(getattr(client, op)(45), expected, f"{op}(45)")
    check(client.get(45), "", "get(45) after popping everything")
    check(client.get(3), None, "get(3): lpop of a missing key created it")
    check(client.get(86), None, "get(86)")
    check(client.get(34), None, "get(34)")
    client.append(86, "URV_ROCKS")
    client.append(34, "paxos_enjoyer")
    check(client.get(86), "URV_ROCKS", "get(86)")
    check(client.get(34), "paxos_enjoyer", "get(34)")
    # Multibyte characters: a pop takes one whole character.
    client.put(50, "héllo€")
    check(client.lpop(50), "h", "lpop(50)")
    check(client.lpop(50), "é", "lpop(50)")
    check(client.rpop(50), "€", "rpop(50)")
    check(client.get(50), "llo", "get(50)")


def run_threads(name, bodies):
    """Runs each body on its own thread; raises the first failure, or if a thread hangs."""
    failures = []
    lock = threading.Lock()

    def guarded(body):
        try:
            body()
        except BaseException as err:  # noqa: BLE001 - reported below, with its thread
            with lock:
                failures.append(err)

    threads = [threading.Thread(target=guarded, args=(body,), daemon=True) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=THREAD_TIMEOUT)
        if thread.is_alive():
            raise Mismatch(f"{name}: a client thread did not finish within {THREAD_TIMEOUT} s")
    if failures:
        raise Mismatch(f"{name}: {failures[0]!r}") from failures[0]


def parallel_test(addr, pb2, pb2_grpc):
    data = ["1.965.000.000", "75.000.000", "32.000.000", "24.000.000", "3.200.000"]

    def client_body(i):
        def body():
            client = Client(addr, pb2, pb2_grpc)
            try:
                key, value = 20 * i, data[i]
                client.put(key, value)
                check(client.get(key), value, f"client {i}: get({key}) after put")
                client.append(key, value)
                check(client.get(key), value + value, f"client {i}: get({key}) after append")
                client.put(key, "")
                check(client.get(key), "", f"client {i}: get({key}) after put \"\"")
            finally:
                client.close()
        return body

    run_threads("parallel test", [client_body(i) for i in range(3)])


def race_test(addr, pb2, pb2_grpc):
    start = threading.Barrier(3)

    def body():
        client = Client(addr, pb2, pb2_grpc)
        try:
            start.wait(timeout=THREAD_TIMEOUT)
            for _ in range(5):
                client.append(15, "ORA ")
        finally:
            client.close()

    run_threads("race test", [body] * 3)
    client = Client(addr, pb2, pb2_grpc)
    try:
        check(client.get(15), "ORA " * 15, "race test: get(15)")
    finally:
        client.close()


def limits_test(client):
    """A value over the server's default 1 MiB limit is refused with INVALID_ARGUMENT and not stored."""
    try:
        client.put(77, "x" * (1024 * 1024 + 1))
    except grpc.RpcError as err:
        check(err.code(), grpc.StatusCode.INVALID_ARGUMENT, "put of a value over 1 MiB")
    else:
        raise Mismatch("put of a value over 1 MiB was accepted")
    check(client.get(77), None, "get(77) after a refused put")


def main():
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} HOST:PORT", file=sys.stderr)
        return 2
    addr = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="kv-compat-stubs-") as out_dir:
        pb2, pb2_grpc = generate_stubs(out_dir, "kvstore")
        client = Client(addr, pb2, pb2_grpc)
        try:
            for name, run in [
                ("sequence test", lambda: sequence_test(client)),
                ("parallel test", lambda: parallel_test(addr, pb2, pb2_grpc)),
                ("race test", lambda: race_test(addr, pb2, pb2_grpc)),
                ("limits test", lambda: limits_test(client)),
            ]:
                try:
                    run()
                except (Mismatch, grpc.RpcError, grpc.FutureTimeoutError) as err:
                    print(f"FAIL {name}: {err}", file=sys.stderr)
                    return 1
                print(f"ok   {name}")
        finally:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
