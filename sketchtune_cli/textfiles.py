"""Reading user text files strictly: bytes that are not valid in the declared encoding are refused in one
line, never replaced (a silently mangled calibration or training text changes the result without a trace).
The encoding is the user's to declare (``compress.calib_encoding``, ``data.encoding``; UTF-8 by default)."""
from __future__ import annotations

import codecs
from pathlib import Path

from .errors import UserError


def read_text(path: Path, encoding: str, what: str, key: str | None = None) -> str:
    """The text of ``path`` decoded with ``encoding`` (a UTF-8 byte-order mark is dropped). ``what`` names
    the file in messages, ``key`` the setting that declares its encoding (None: there is none)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"{key}={encoding} is not a known text encoding; use e.g. utf-8, latin-1, cp1252") from None
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror or type(e).__name__})") from None
    if b"\0" in raw and not name.startswith(("utf-16", "utf-32")):
        at = raw.index(b"\0")
        raise UserError(f"{what} {path} looks binary (a NUL byte at offset {at}); give a text file")
    try:
        return raw.decode("utf-8-sig" if name == "utf-8" else name)
    except UnicodeDecodeError as e:
        declare = f", or declare its encoding with {key}=ENCODING (e.g. latin-1)" if key else ""
        raise UserError(f"{what} {path} is not valid {encoding} (byte {raw[e.start]:#04x} at offset {e.start}); "
                        f"convert it to UTF-8{declare}") from None
