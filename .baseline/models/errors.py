"""Errors raised by the model path for expected, user-facing failures."""
from __future__ import annotations


class ModelLoadError(Exception):
  """A model could not be loaded: missing file, corrupt data, bad config.

  NOTE: the message is always one line that names the file and the problem,
  so the CLI can print it as `pagedjax: error: <message>` without a traceback.
  """

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))
