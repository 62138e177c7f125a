#!/usr/bin/env python3
"""The course assignment's replication interface (subtask 3), as a plain grpcio client.

Usage: compat_python_replicas.py SHARDMASTER STORAGE STORAGE STORAGE STORAGE

The shard master must run with --replication-factor 3 --consistency strong, and the storage
servers must be running. JoinReplica of the four servers: the first becomes a primary (MASTER),
and every later one too, since replica sets are placed per slot along the ring. QueryReplica names
the key's primary for every write operation, always the same one, and for GET a member of the
key's replica set, chosen at random: over many queries, three distinct servers. Every key of
0..=100 is written at the server QueryReplica(PUT) names, then read back at every server that
QueryReplica(GET) names, and, the consistency being strong, every read returns the value just
written. Appends and pops at the primary read back at the secondaries too. A write sent to a
secondary is refused with FAILED_PRECONDITION (wrong shard), and changes nothing.

Needs the grpcio and grpcio-tools packages.
"""

import sys
import tempfile

import grpc

from compat_common import RPC_TIMEOUT, Mismatch, check, expect_error, generate_stubs


def main():
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    servers = sys.argv[2:]
    with tempfile.TemporaryDirectory() as out_dir:
        pb2, pb2_grpc = generate_stubs(out_dir, "shardmaster")
        kv_pb2, kv_pb2_grpc = generate_stubs(out_dir, "kvstore")
        stores = {server: kv_pb2_grpc.KVStoreStub(grpc.insecure_channel(server)) for server in servers}
        channel = grpc.insecure_channel(sys.argv[1])
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        master = pb2_grpc.ShardMasterStub(channel)

        def where(key, operation):
            request = pb2.QueryReplicaRequest(key=key, operation=operation)
            return master.QueryReplica(request, timeout=RPC_TIMEOUT).server

        def get(server, key):
            response = stores[server].Get(kv_pb2.GetRequest(key=key), timeout=RPC_TIMEOUT)
            return response.value if response.HasField("value") else None

        roles = [master.JoinReplica(pb2.JoinRequest(server=s), timeout=RPC_TIMEOUT).role for s in servers]
        check(roles, [pb2.MASTER] * 4, "every server joins as a primary of some slots")
        print("ok   join replica")

        writes = [pb2.PUT, pb2.APPEND, pb2.L_POP, pb2.R_POP]
        primaries = {}
        readers = {}
        for key in range(101):
            named = {where(key, op) for op in writes}
            if len(named) != 1:
                raise Mismatch(f"key {key}: writes sent to {named}, expected one primary")
            primaries[key] = named.pop()
            readers[key] = {where(key, pb2.GET) for _ in range(30)}
            if primaries[key] not in readers[key] and len(readers[key]) < 3:
                raise Mismatch(f"key {key}: reads sent to {readers[key]}")
            check(len(readers[key]), 3, f"key {key}: GET spread over its three replicas")
        check(set(primaries.values()), set(servers), "primaries spread over every server")
        print("ok   query replica")

        for key, primary in primaries.items():
            stores[primary].Put(kv_pb2.PutRequest(key=key, value=f"value {key}"), timeout=RPC_TIMEOUT)
            for reader in readers[key]:
                check(get(reader, key), f"value {key}", f"key {key} at replica {reader} right after the put")
        stores[primaries[5]].Append(kv_pb2.AppendRequest(key=5, value="!é"), timeout=RPC_TIMEOUT)
        popped = stores[primaries[5]].RPop(kv_pb2.GetRequest(key=5), timeout=RPC_TIMEOUT)
        check(popped.value, "é", "rpop takes a whole character")
        for reader in readers[5]:
            check(get(reader, 5), "value 5!", f"key 5 at replica {reader} after append and pop")
        print("ok   reads at every replica")

        secondary = next(r for r in readers[9] if r != primaries[9])
        expect_error(
            lambda: stores[secondary].Put(kv_pb2.PutRequest(key=9, value="wrong"), timeout=RPC_TIMEOUT),
            grpc.StatusCode.FAILED_PRECONDITION, "a put at a secondary")
        for reader in readers[9]:
            check(get(reader, 9), "value 9", f"key 9 at {reader} after the refused put")
        print("ok   writes only at the primary")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (Mismatch, grpc.RpcError, RuntimeError) as err:
        print(f"FAIL {err}", file=sys.stderr)
        sys.exit(1)
