"""The HTTP API served by ``certd run``."""
