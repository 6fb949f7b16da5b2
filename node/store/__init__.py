"""Store layer: this node's embedded rocksdict storage (task logs)."""
