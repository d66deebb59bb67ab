"""Reading local text files with explicit encodings and clear errors."""
from __future__ import annotations

from pathlib import Path

from jaxlm.errors import DataError


def read_text(path: str | Path, encoding: str = "utf-8", what: str = "data file") -> str:
    """Read a whole text file; a decoding error names the file, line and byte, and the fix."""
    p = Path(path)
    if not p.is_file():
        hint = (" The default data location is ../shared/data next to the repository; set "
                "JAXLM_DATA or the config key data_root to where your copy lives.")
        raise DataError(f"The {what} '{p}' does not exist.{hint}", culprit=str(p))
    raw = p.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"The {what} '{p}' is not valid {encoding}: byte 0x{raw[e.start]:02x} at offset "
            f"{e.start} (line {line}) cannot be decoded. If the file uses another encoding, say so "
            "with the encoding option: data.encoding: iso-8859-1 in the config, "
            "?encoding=iso-8859-1 after a dataset spec, or --encoding on the command line.",
            culprit=str(p)) from None
    except LookupError:
        raise DataError(f"Unknown text encoding '{encoding}' for '{p}'. Use a Python codec name "
                        "such as utf-8 or iso-8859-1.", culprit=encoding) from None


def split_lines(text: str) -> list[str]:
    """Lines split on '\n' only (str.splitlines also splits on characters such as U+0085, which
    occur inside ISO-8859-1 text), without the line ends; a final newline adds no empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [x[:-1] if x.endswith("\r") else x for x in lines]
