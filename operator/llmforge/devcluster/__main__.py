"""`python -m llmforge.devcluster up|down|status`."""

import sys

from .persistent import main

sys.exit(main(sys.argv[1:]))
