"""Real servers (Pebble, BIND, HAProxy, nginx, PostgreSQL) started and stopped by the tests."""
