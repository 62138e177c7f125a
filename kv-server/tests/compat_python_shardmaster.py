#!/usr/bin/env python3
"""The course assignment's shard master interface, as a plain grpcio client.

Usage: compat_python_shardmaster.py SHARDMASTER STORAGE STORAGE STORAGE

The storage servers must be running (a shard master only accepts servers that answer).

Generates the Python stubs from kv-proto/proto/shardmaster.proto with grpc_tools.protoc, then, on
a fresh shard master: Query with no member fails with UNAVAILABLE; Join of 3 servers; every key of
the assignment's range (0..=100) is owned by one of them, as "host:port" ready for
grpc.insecure_channel, and the keys are spread over all three; a second Join of a member fails
with ALREADY_EXISTS; after a Leave no key is owned by the leaver and keys of the others did not
move; Leave of a non-member fails with NOT_FOUND. Exits non-zero with a message on any mismatch.

Needs the grpcio and grpcio-tools packages.
"""

import sys
import tempfile

import grpc

from compat_common import RPC_TIMEOUT, Mismatch, check, generate_stubs

SERVERS = []


def expect_error(call, code, what):
    try:
        call()
    except grpc.RpcError as err:
        check(err.code(), code, what)
        return
    raise Mismatch(f"{what}: expected {code}, the call succeeded")


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    SERVERS.extend(sys.argv[2:])
    with tempfile.TemporaryDirectory() as out_dir:
        pb2, pb2_grpc = generate_stubs(out_dir, "shardmaster")
        channel = grpc.insecure_channel(sys.argv[1])
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        master = pb2_grpc.ShardMasterStub(channel)

        def query(key):
            return master.Query(pb2.QueryRequest(key=key), timeout=RPC_TIMEOUT).server

        expect_error(lambda: query(1), grpc.StatusCode.UNAVAILABLE, "query with no member")
        for server in SERVERS:
            master.Join(pb2.JoinRequest(server=server), timeout=RPC_TIMEOUT)
        owners = {key: query(key) for key in range(101)}
        for key, owner in owners.items():
            if owner not in SERVERS:
                raise Mismatch(f"key {key} is owned by {owner!r}, not a member")
        check(set(owners.values()), set(SERVERS), "keys 0..=100 spread over every member")
        expect_error(lambda: master.Join(pb2.JoinRequest(server=SERVERS[0]), timeout=RPC_TIMEOUT),
                     grpc.StatusCode.ALREADY_EXISTS, "second join of a member")
        print("ok   join and query")

        master.Leave(pb2.LeaveRequest(server=SERVERS[1]), timeout=RPC_TIMEOUT)
        for key, before in owners.items():
            after = query(key)
            if after == SERVERS[1]:
                raise Mismatch(f"key {key} is still owned by the server that left")
            if before != SERVERS[1]:
                check(after, before, f"owner of key {key}, which the leave should not move")
        expect_error(lambda: master.Leave(pb2.LeaveRequest(server="127.0.0.1:1"), timeout=RPC_TIMEOUT),
                     grpc.StatusCode.NOT_FOUND, "leave of a non-member")
        print("ok   leave")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Mismatch, grpc.RpcError, RuntimeError) as err:
        print(f"FAIL {err}", file=sys.stderr)
        sys.exit(1)
