"""API layer: the client and peer gRPC services of a node."""
