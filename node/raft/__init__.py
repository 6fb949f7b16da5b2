"""Raft layer: the pysyncobj adapter around the replicated State (one replicated entry point)."""
