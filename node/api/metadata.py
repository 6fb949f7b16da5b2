"""gRPC metadata keys shared by nodes and their clients. The CLI imports this
module (tools/cli/client.py): it stays free of imports."""

ANSWERED_BY = "x-raftflow-node"   # trailing metadata on every error a node sends: its id
REQUEST_ID = "x-raftflow-request-id"   # request metadata on a write: the client's id of it, kept across retries
