"""The one exception type users see: a clear sentence, printed by the CLI without a traceback."""


class GPT2Error(Exception):
    """A problem with the user's input or environment, phrased so that the user can fix it."""
