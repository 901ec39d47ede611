"""The CLI's safety net for failures the user caused but no check caught first: a file that cannot be
written (permissions, a read-only or full disk), text in the wrong encoding, a damaged safetensors file.
Each becomes one line and exit 2 like a UserError. Anything else stays an exit-1 bug report."""
from __future__ import annotations

import errno

from .errors import one_line

# errno values that describe the user's environment (paths, permissions, space), not a bug in sketchtune
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG, errno.EMFILE, errno.ELOOP}


def user_caused(err: BaseException) -> str | None:
    """A one-line message with a fix for a user-caused failure, or None when ``err`` looks like a bug."""
    if isinstance(err, OSError) and err.errno in USER_ERRNOS:
        where = f" {one_line(err.filename)}" if err.filename else ""
        target = f" (and {one_line(err.filename2)})" if getattr(err, "filename2", None) else ""
        return (f"cannot use{where}{target}: {err.strerror or one_line(err)}; check the path, its permissions and "
                f"free space, or choose another location")
    if isinstance(err, UnicodeDecodeError):
        return (f"a text file is not valid {err.encoding} (byte {err.object[err.start]:#04x} at offset "
                f"{err.start}); convert it to UTF-8")
    if type(err).__name__ == "SafetensorError":
        return (f"a safetensors file cannot be read ({one_line(err)}); it is damaged or incomplete: re-create or "
                f"re-download it")
    return None
