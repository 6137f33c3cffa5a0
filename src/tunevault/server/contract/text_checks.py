"""Text that cannot be encoded: lone UTF-16 surrogates that JSON's \\ud800 escapes let through.

json.loads accepts "\\ud800" and yields a str that no UTF-8 encoder (tokenizer, scrubber, sealed
copy) can write, so such a row would pass the upload and fail hours later with INTERNAL. The
upload check refuses it instead, naming the field.
"""

from __future__ import annotations


def _bad(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unencodable_field(value: object, path: str = "") -> str | None:
    """The path (e.g. messages[1].content) of the first string, key or value, that is not valid Unicode."""
    if isinstance(value, str):
        return path or "row" if _bad(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and _bad(key):
                return path or "row"
            found = unencodable_field(item, where)
            if found is not None:
                return found
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = unencodable_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None
