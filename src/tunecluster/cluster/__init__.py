"""Wiring the roles together locally: an embedded Redis and chief/worker processes."""

from tunecluster.cluster.local import LocalCluster
from tunecluster.cluster.redis_server import RedisServer, find_redis_server, free_port

__all__ = ["LocalCluster", "RedisServer", "find_redis_server", "free_port"]
