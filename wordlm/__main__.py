"""`python -m wordlm`: the CLI, as torchrun's `-m wordlm` starts each rank."""

import sys

from wordlm.cli import main

sys.exit(main())
