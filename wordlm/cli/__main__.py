"""`python -m wordlm.cli`: the CLI (tests and benchmarks start it so)."""

import sys

from wordlm.cli import main

sys.exit(main())
