"""Generated protobuf and gRPC modules (from protos/ via tools/gen-protos). Do not edit."""
