"""`wordlm`: the command line, a thin layer over the Python API (`main`: the parser and one function
per command). Imports every workflow lazily, inside the command that needs it, so `wordlm --help`
costs no numpy and no torch.
"""

from wordlm.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
