"""``python -m headrace``: the same as the ``headrace`` command."""

import sys

from headrace.cli import main

if __name__ == "__main__":  # guarded: pytest's --doctest-modules imports this module
    sys.exit(main())
