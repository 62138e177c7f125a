#!/usr/bin/env python3
"""The course assignment's shard master interface, as a plain grpcio client.

Usage: compat_python_shardmaster.py SHARDMASTER STORAGE STORAGE STORAGE

The storage servers must be running (a shard master only accepts servers that answer).

Generates the Python stubs from kv-proto/proto/shardmaster.proto and kvstore.proto with
grpc_tools.protoc, then, on a fresh shard master: Query with no member fails with UNAVAILABLE;
Join of 3 servers; every key of the assignment's range (0..=100) is owned by one of them, as
"host:port" ready for grpc.insecure_channel, and the keys are spread over all three; a second Join
of a member fails with ALREADY_EXISTS. Then, as the assignment's clients do, every key is written
to the server Query names and read back there, and another server refuses it (FAILED_PRECONDITION:
wrong shard). After a Leave no key is owned by the leaver, keys of the others did not move, and
every value reads back intact from its new owner; Leave of a non-member fails with NOT_FOUND.
Exits non-zero with a message on any mismatch.

Needs the grpcio and grpcio-tools packages.
"""

import sys
import tempfile

import grpc

from compat_common import RPC_TIMEOUT, Mismatch, check, expect_error, generate_stubs

SERVERS = []


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    SERVERS.extend(sys.argv[2:])
    with tempfile.TemporaryDirectory() as out_dir:
        pb2, pb2_grpc = generate_stubs(out_dir, "shardmaster")
        kv_pb2, kv_pb2_grpc = generate_stubs(out_dir, "kvstore")
        stores = {server: kv_pb2_grpc.KVStoreStub(grpc.insecure_channel(server)) for server in SERVERS}

        def put(server, key, value):
            stores[server].Put(kv_pb2.PutRequest(key=key, value=value), timeout=RPC_TIMEOUT)

        def get(server, key):
            response = stores[server].Get(kv_pb2.GetRequest(key=key), timeout=RPC_TIMEOUT)
            return response.value if response.HasField("value") else None
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

        for key, owner in owners.items():
            put(owner, key, f"value {key}")
        for key, owner in owners.items():
            check(get(owner, key), f"value {key}", f"key {key} read back from its owner")
        elsewhere = next(server for server in SERVERS if server != owners[7])
        expect_error(lambda: get(elsewhere, 7), grpc.StatusCode.FAILED_PRECONDITION, "key 7 at a non-owner")
        print("ok   data at the owners")

        master.Leave(pb2.LeaveRequest(server=SERVERS[1]), timeout=RPC_TIMEOUT)
        for key, before in owners.items():
            after = query(key)
            if after == SERVERS[1]:
                raise Mismatch(f"key {key} is still owned by the server that left")
            if before != SERVERS[1]:
                check(after, before, f"owner of key {key}, which the leave should not move")
        for key in owners:
            check(get(query(key), key), f"value {key}", f"key {key} at its owner after the leave")
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
