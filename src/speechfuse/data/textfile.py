"""Reading the text files a user hands over (manifests, split files, transcripts, trial lists): every one is
decoded here, so a file in another encoding gets one clear error naming the file, the line and the byte,
instead of a UnicodeDecodeError that names none of them.

    with open_text(path, "trial list") as f:
        for line in f: ...
"""
from __future__ import annotations

import io
import os
from pathlib import Path

from speechfuse.errors import ConfigError


class TextEncodingError(ConfigError):
    """A text input file is not in the encoding it must be in (UTF-8)."""


def read_text(path: str | os.PathLike, what: str, encoding: str = "utf-8") -> str:
    """The whole file, decoded. `what` names the kind of file in the error ("manifest", "trial list")."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TextEncodingError(
            f"{what} {path} line {line}: byte 0x{data[err.start]:02x} at column {column} is not valid UTF-8; save "
            "the file as UTF-8 (for example `iconv -f latin1 -t utf-8 OLD > NEW` for a Latin-1 file)") from None


def open_text(path: str | os.PathLike, what: str, encoding: str = "utf-8", newline: str | None = None) -> io.StringIO:
    """read_text as a file object; `newline` as for open() (pass "" for the csv module)."""
    return io.StringIO(read_text(path, what, encoding), newline=newline)


__all__ = ["TextEncodingError", "read_text", "open_text"]
