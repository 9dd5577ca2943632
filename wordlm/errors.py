"""The one exception type that crosses the API boundary.

Every mistake a user can make (a bad path, a corrupt file, a word the vocabulary lacks, an option out
of range) is raised as a `WordLMError` whose message is one line saying what is wrong. The CLI prints
it and exits non-zero; the server turns it into a 4xx. Anything else is a bug and keeps its traceback.
"""


class WordLMError(Exception):
    """A user-facing error: the message is one line, meant to be read by a person."""
