"""The errors every dataset reader raises for bad input; their messages name the file and line."""


class ManifestError(ValueError):
    """A manifest row (or CoNLL line) is malformed or unreadable; the message names the file and line
    (``mm.data.validate.check_dataset`` lists every problem of a dataset in one)."""


class MediaError(ValueError):
    """A manifest value (a media path, its file, a text) cannot be used; the message names the
    path and the reason, and the dataset adds the row's ``file:line`` (``mm.data.media``)."""


LISTED = 50  # problems listed one per line in an error or report; the rest are counted


def listing(lines: list[str], limit: int = LISTED, indent: str = "") -> str:
    """``lines`` one per line (``indent`` before each), at most ``limit`` of them and then
    ``... and N more (M in all)``: a garbage manifest of 150,000 lines gives a readable error."""
    shown = [f"{indent}{line}" for line in lines[:limit]]
    if len(lines) > limit:
        shown.append(f"{indent}... and {len(lines) - limit} more ({len(lines)} in all)")
    return "\n".join(shown)
