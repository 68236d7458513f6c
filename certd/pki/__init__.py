"""Certificates, keys and the checks on them, through ``cryptography``; sealing keys at rest; TLS probes."""
