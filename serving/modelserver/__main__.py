"""Entry point for ``python -m serving.modelserver`` (one model replica)."""

import sys

from serving.modelserver.server import main

if __name__ == "__main__":
    sys.exit(main())
