"""The errors every dataset reader raises for bad input; their messages name the file and line."""


class ManifestError(ValueError):
    """A manifest row (or CoNLL line) is malformed or unreadable; the message names the file and line
    (``mm.data.validate.check_dataset`` lists every problem of a dataset in one)."""


class MediaError(ValueError):
    """A manifest value (a media path, its file, a text) cannot be used; the message names the
    path and the reason, and the dataset adds the row's ``file:line`` (``mm.data.media``)."""
