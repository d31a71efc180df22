"""One exception type for every user-facing failure.

`main.py` catches `LlamalogueError` and prints its message as a single line
(`error: <message>`), then exits with status 2. Raise it with a message that
names what is wrong and where (file, line, config key).
"""


class LlamalogueError(Exception):
  """A user-facing error: bad input, a missing path, a wrong config value."""


class ConfigError(LlamalogueError):
  """A config key is missing, mistyped or has the wrong type/value."""


class DataError(LlamalogueError):
  """An input file is missing, unreadable or malformed."""
