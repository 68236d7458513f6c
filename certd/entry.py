"""The ``certd`` console entry point, kept import-light on purpose.

It notes when the command was invoked before importing anything heavy, so a
``certd renew`` knows when its request began: a renewal of the same
certificate that finished after that moment (started by a sibling process
launched at the same time) answers it, instead of a second order.
"""

from __future__ import annotations

import time

INVOKED_AT = time.time()


def main() -> None:
    from certd.cli.main import main as cli_main

    cli_main(INVOKED_AT)
