"""gRPC metadata keys shared by nodes and their clients. The CLI imports this
module (tools/cli/client.py): it stays free of imports."""

ANSWERED_BY = "x-raftflow-node"   # trailing metadata on every error a node sends: its id
AUTHORIZATION = "authorization"   # request metadata of every client call: "Bearer TOKEN"
BEARER = "Bearer "
NO_QUORUM = "x-raftflow-no-quorum"   # trailing metadata, "1", on UNAVAILABLE from a node that reaches no majority
REQUEST_ID = "x-raftflow-request-id"   # request metadata on a write: the client's id of it, kept across retries
MIN_APPLIED = "x-raftflow-min-applied"   # request metadata on a read: the highest ReadMeta.last_applied the client saw
APPLIED = "x-raftflow-applied"   # trailing metadata on a call's answer: the Raft index this node had applied by then
