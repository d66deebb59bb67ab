"""Local text files read as a stream: a plain-text source that never holds the file in memory.

`TextFileSource` is the pretraining source of a `text:` file. It reads the file in chunks
(`read_pieces`), so a corpus larger than memory can be scanned, held out, fed to tokenizer
training and tokenised into the token store (`jaxlm.data.token_store`). Its documents follow
`data.documents` exactly as `jaxlm.data.local.read_text_documents` reads them (file: the whole
text; line: each non-blank line; blank_line: each run of non-blank lines), and a held-out
segment is the same split `lm_data.holdout` makes of the in-memory text: the last fraction of
the characters of a one-document file, else of the documents. Random access (`src[i]`) is kept
for the pipelines that still need text (packed whole-word masking): it reads the segment whole,
as the in-memory source did.
"""
from __future__ import annotations

import codecs
import itertools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from jaxlm.data.local import DataReport
from jaxlm.data.sources import Source, Spec
from jaxlm.errors import DataError

CHUNK_BYTES = 1 << 20  # bytes read per chunk: bounded memory whatever the file size


def _decode_error(path: Path, encoding: str, offset: int, byte: int, line: int) -> DataError:
    return DataError(
        f"The data file '{path}' is not valid {encoding}: byte 0x{byte:02x} at offset {offset} "
        f"(line {line}) cannot be decoded. If the file uses another encoding, say so with the "
        "encoding option: data.encoding: iso-8859-1 in the config, ?encoding=iso-8859-1 after a "
        "dataset spec, or --encoding on the command line.", culprit=str(path))


def read_pieces(path: Path, encoding: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[str]:
    """The decoded text of a file, chunk by chunk (a character is never cut in two); a decoding
    error names the file, byte offset and line, as `jaxlm.data.text.read_text` does."""
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
    except LookupError:
        raise DataError(f"Unknown text encoding '{encoding}' for '{path}'. Use a Python codec name "
                        "such as utf-8 or iso-8859-1.", culprit=encoding) from None
    if not path.is_file():
        raise DataError(f"The data file '{path}' does not exist. The default data location is "
                        "../shared/data next to the repository; set JAXLM_DATA or the config key "
                        "data_root to where your copy lives.", culprit=str(path))
    offset = lines = 0
    with path.open("rb") as f:
        while True:
            raw = f.read(chunk_bytes)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                pending = len(e.object) - len(raw)  # bytes the decoder held from the last chunk
                at = offset - pending + e.start
                line = lines + e.object.count(b"\n", 0, e.start) + 1
                raise _decode_error(path, encoding, at, e.object[e.start], line) from None
            offset += len(raw)
            lines += raw.count(b"\n")
            if text:
                yield text
            if not raw:
                return


def char_range(pieces: Iterable[str], start: int, stop: int | None) -> Iterator[str]:
    """Characters [start, stop) of a stream of text pieces."""
    pos = 0
    for piece in pieces:
        end = pos + len(piece)
        if stop is not None and pos >= stop:
            return
        if end > start:
            yield piece[max(0, start - pos):None if stop is None else stop - pos]
        pos = end


def rechunk(pieces: Iterable[str], size: int) -> Iterator[str]:
    """The same text in pieces of exactly `size` characters (the last one shorter), as
    `tokenizer.iter_chunks` cuts an in-memory text."""
    buf = ""
    for piece in pieces:
        buf += piece
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


def line_groups(pieces: Iterable[str], n: int = 256) -> Iterator[str]:
    """The text in pieces of `n` lines (str.splitlines, ends kept), as `lm_data.encode_stream`
    cuts an in-memory text before tokenizing it."""
    carry, group = "", []
    for piece in pieces:
        lines = (carry + piece).splitlines(keepends=True)
        carry = lines.pop() if lines else ""  # maybe unfinished, or a '\r' before '\n'
        for line in lines:
            group.append(line)
            if len(group) == n:
                yield "".join(group)
                group = []
    if carry:
        group.append(carry)
    if group:
        yield "".join(group)


def split_lines_stream(pieces: Iterable[str]) -> Iterator[str]:
    """Lines as `jaxlm.data.text.split_lines` splits them ('\n' only, '\r' dropped at the end,
    a final newline adds no empty line), from a stream."""
    carry = ""
    for piece in pieces:
        parts = (carry + piece).split("\n")
        carry = parts.pop()
        for line in parts:
            yield line[:-1] if line.endswith("\r") else line
    if carry:
        yield carry[:-1] if carry.endswith("\r") else carry


def iter_documents(pieces: Iterable[str], documents: str, path: Path,
                   report: DataReport | None = None) -> Iterator[str]:
    """Documents of a line/blank_line text stream, as `local.read_text_documents` makes them
    (empty lines of documents=line reported)."""
    block: list[str] = []
    for n, line in enumerate(split_lines_stream(pieces), 1):
        if documents == "line":
            if line.strip():
                yield line
            elif report is not None:
                report.add("empty line", f"{path}:{n}")
        elif line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


@dataclass(frozen=True)
class FileStats:
    """What one scan of a file tells: its size and mtime (to know it is unchanged), characters,
    whether any is not whitespace, and its number of documents."""

    size: int
    mtime_ns: int
    chars: int
    nonblank: bool
    docs: int


def file_identity(path: Path) -> tuple[int, int]:
    """(size, mtime_ns): a file with both unchanged is taken as unchanged."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def scan_file(path: Path, encoding: str, documents: str, report: DataReport | None = None
              ) -> FileStats:
    """One streaming pass: characters, blank or not, documents (decoding checked throughout)."""
    size, mtime = file_identity(path)
    chars, nonblank = 0, False

    def counted() -> Iterator[str]:
        nonlocal chars, nonblank
        for piece in read_pieces(path, encoding):
            chars += len(piece)
            nonblank = nonblank or bool(piece.strip())
            yield piece

    if documents == "file":
        for _ in counted():
            pass
        docs = int(nonblank)
    else:
        docs = sum(1 for _ in iter_documents(counted(), documents, path, report))
    if report is not None and documents == "file" and not nonblank:
        report.add("empty file", f"{path}:1")
    return FileStats(size, mtime, chars, nonblank, docs)


def _scan_cached(path: Path, encoding: str, documents: str, report: DataReport,
                 cache_dir: Path | None) -> FileStats:
    """`scan_file`, remembered in the token cache (keyed by path, size, mtime, options), so a
    later run does not read a large file again just to count it."""
    size, mtime = file_identity(path)
    key = json.dumps([str(path.resolve()), size, mtime, encoding, documents])
    entry = None
    if cache_dir is not None:
        entry = cache_dir / "scans" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")
        try:
            saved = json.loads(entry.read_text())
            if saved.get("key") == key:
                return FileStats(**saved["stats"])
        except (OSError, ValueError, TypeError, KeyError):
            pass
    skipped = report.skipped
    stats = scan_file(path, encoding, documents, report)
    # a scan that reported problems is not remembered: the next run reports them again
    if (entry is not None and report.skipped == skipped
            and (stats.size, stats.mtime_ns) == file_identity(path)):
        from jaxlm.atomic import write_text_atomic
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(entry, json.dumps({"key": key, "stats": stats.__dict__}))
        except OSError:
            pass  # only a shortcut: the store's own write reports an unwritable cache
    return stats


class TextFileSource(Source):
    """A plain-text file (or a segment of it) as a lazily read source; see the module docstring.

    `segment` is (start, stop): characters for documents=file, documents otherwise; None: all.
    """

    def __init__(self, spec: Spec, split: str, path: Path, report: DataReport,
                 segment: tuple[int, int] | None = None, cache_dir: Path | None = None,
                 stats: FileStats | None = None):
        self.spec, self.split, self.path, self.report = spec, split, path, report
        self.label_names, self.segment, self.cache_dir = None, segment, cache_dir
        self.encoding, self.documents = spec.options.encoding, spec.options.documents
        self.files = [path]
        self._stats, self._texts = stats, None

    @property
    def stats(self) -> FileStats:
        """The file's scan (done once, on first use)."""
        if self._stats is None:
            self._stats = _scan_cached(self.path, self.encoding, self.documents, self.report,
                                       self.cache_dir)
            if self.spec.options.on_invalid == "report":
                self.report.warn()
        return self._stats

    def bounds(self) -> tuple[int, int]:
        """The segment in the file's units (characters or documents)."""
        if self.segment is not None:
            return self.segment
        return (0, self.stats.chars if self.documents == "file" else self.stats.docs)

    def __len__(self) -> int:
        if self.documents == "file":
            return int(self.stats.nonblank)
        a, b = self.bounds()
        return b - a

    def pieces(self) -> Iterator[str]:
        """The segment's text, chunk by chunk (documents=file)."""
        a, b = self.bounds()
        return char_range(read_pieces(self.path, self.encoding), a, b)

    def texts(self) -> Iterator[str]:
        """Every document of the segment, in order, streamed (documents=file: the segment's
        text in chunks of 64k characters, for tokenizer training)."""
        if self.documents == "file":
            return rechunk(self.pieces(), 1 << 16) if len(self) else iter(())
        a, b = self.bounds()
        docs = iter_documents(read_pieces(self.path, self.encoding), self.documents, self.path)
        return itertools.islice(docs, a, b)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < len(self):
            raise IndexError(i)
        if self._texts is None:  # the in-memory fallback: the segment read whole
            self._texts = (["".join(self.pieces())] if self.documents == "file"
                           else list(self.texts()))
        return {"text": self._texts[int(i)], "label": -1}

    def holdout(self, fraction: float) -> tuple["TextFileSource", "TextFileSource"]:
        """(train, validation): the last `fraction` of the characters of a one-document file,
        else of the documents (`lm_data.holdout`'s split, without reading the text)."""
        a, b = self.bounds()
        if self.documents == "file" and len(self):
            cut = a + int((b - a) * (1.0 - fraction))
        else:
            n = len(self)
            n_val = max(1, int(round(n * fraction)))
            if n_val >= n:
                raise DataError(f"{self.name} has {n} documents: too few to hold out "
                                f"data.val_fraction={fraction} for validation. Give "
                                "data.validation.", culprit="data.validation")
            cut = b - n_val
        mk = lambda seg, split: TextFileSource(self.spec, split, self.path, self.report,  # noqa
                                               seg, self.cache_dir, self._stats)
        return mk((a, cut), "train"), mk((cut, b), "validation")

    def identity(self) -> dict[str, Any]:
        """What the tokens of this segment depend on (the token store's key), file unchanged."""
        size, mtime = file_identity(self.path)
        return {"path": str(self.path.resolve()), "size": size, "mtime_ns": mtime,
                "encoding": self.encoding, "documents": self.documents,
                "segment": list(self.bounds())}


def open_text_stream(spec: Spec, split: str, cache_dir: Path | None) -> Source:
    """One split of a `text:` spec as a `TextFileSource` (other kinds: `open_source`)."""
    from jaxlm.data.sources import _local_file, open_source
    if spec.kind != "text":
        return open_source(spec, split)
    split = spec.split or split or "train"
    path = _local_file(spec, split)
    report = DataReport(f"{path}", spec.options.on_invalid)
    return TextFileSource(spec, split, path, report, cache_dir=cache_dir)
