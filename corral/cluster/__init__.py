"""Cluster level: routing policies shared with the simulator, the router, replicas."""
