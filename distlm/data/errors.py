"""The one exception type of the data pipeline."""


class DataError(Exception):
    """Bad input, a broken or mismatched dataset: the message names the file (and line, or key),
    says what was expected and what to do."""
