"""URL converters. Infrastructure: imports no app."""


class IdConverter:
    """A primary key in a URL: at most 18 digits, so it always fits a 64-bit integer column (a longer
    number is a 404, never a database overflow)."""

    regex = "[0-9]{1,18}"

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value) -> str:
        return str(value)
