"""certd: keep TLS certificates fresh on load balancers and backends.

The public surface is the ``certd`` command and its HTTP API (see README and
``docs/``); the modules are organised as the renewal pipeline's steps.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
