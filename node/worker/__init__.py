"""Worker layer: runs assigned task attempts, stores their logs, reports results through Raft."""
