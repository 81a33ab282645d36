"""The error every dataset reader raises for bad input; its message names the file and line."""


class ManifestError(ValueError):
    """A manifest row (or CoNLL line) is malformed; the message names the file and line."""
