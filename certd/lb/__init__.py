"""The load balancer's side: HAProxy lines certd writes, audits of a config, health checks after a rotation."""
