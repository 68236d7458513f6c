"""``python -m certd`` is the same as the ``certd`` command."""

from certd.cli import main

main()
