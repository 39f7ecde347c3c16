"""The one exception type of the Hugging Face export and import."""


class ExportError(ValueError):
    """An export or import input is invalid; the message names the file or key and what to do."""
