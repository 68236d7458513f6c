"""The ``certd`` command."""
