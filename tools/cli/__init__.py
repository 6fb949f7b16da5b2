"""The raftflow command line: client verbs over gRPC, `raftflow node`, and the local-cluster helpers behind tools/."""
