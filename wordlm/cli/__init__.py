"""`wordlm`: the command line, a thin layer over the Python API: `parser` (the flags, made from the
settings' dataclasses), `commands` (one function per subcommand) and `main` (errors as one line).
Every workflow is imported inside the command that needs it, so `wordlm --help` costs no torch.
"""

from wordlm.cli.main import main
from wordlm.cli.parser import build_parser

__all__ = ["build_parser", "main"]
