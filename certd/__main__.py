"""``python -m certd`` is the same as the ``certd`` command."""

from certd.entry import main

main()
