"""`python -m SkullVAELib ...` runs the `skullvae` command line (used by the Slicer module)."""

import sys

from SkullVAELib.cli import main

if __name__ == "__main__":
    sys.exit(main())
