"""`python -m corral`: the same command line as the `corral` script."""

import sys

from corral.cli import main

if __name__ == "__main__":
    sys.exit(main())
