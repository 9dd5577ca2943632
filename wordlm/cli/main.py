"""`wordlm`: a thin command line over the Python API. One function per command (wordlm.cli.commands),
its flags made in wordlm.cli.parser; errors are one line and exit status 2."""

from __future__ import annotations

import logging
import os
import sys

from wordlm.cli.parser import build_parser
from wordlm.errors import WordLMError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except WordLMError as e:
        print(f"wordlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written, a full disk, a closed pipe
        if isinstance(e, BrokenPipeError):  # e.g. `wordlm generate | head`: the reader has gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        print(f"wordlm {args.command}: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"wordlm {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
