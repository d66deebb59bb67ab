"""The token store: a corpus tokenised once into flat files on disk, reused by later runs.

Pretraining samples windows (or documents) from one long token stream. Held in memory that
stream bounds the corpus by RAM; kept on disk as raw little-endian arrays, each window is one
positional read (`TokenFile`), so only what a batch needs is read. Raw arrays were chosen over
ArrayRecord: random windows need slices at arbitrary token offsets, which a flat array gives in
one read while a record format would cut the stream into records to reassemble, and numpy
reads them with no extra dependency. They are read with os.pread rather than `np.memmap`: a
mapped file counts in the process's resident memory for every page a window touches (and the
kernel may map a large folio, megabytes, per touch), so a long run's RSS would grow toward the
store's size; read pages stay in the OS page cache instead, outside the process.

One store = one folder in the token cache (`data.token_cache`, else $JAXLM_TOKEN_CACHE, else
$XDG_CACHE_HOME/jaxlm/tokens or ~/.cache/jaxlm/tokens: shared by every run, so a corpus is
tokenised once whatever the run's name, and never inside a data folder that may be read-only):

    <stem>-<hash>/tokens.bin    uint16 ids when the vocabulary fits, else uint32
                  offsets.bin   int64 document starts, n_docs + 1 entries
                  meta.json     format, source identity, tokenizer hash, counts (written last)
                  .jaxlm-token-store   marker: this folder was written by jaxlm

<hash> covers the file's path, reading options, the segment (train or held-out part), the
tokenizer's hash and the format version; meta.json adds the file's size and mtime. A store whose
file changed is stale and rebuilt (every store of the file's earlier version is removed); one
whose arrays do not have the sizes meta.json records (truncated) is rebuilt with a warning. A
store is built in a temporary sibling folder and renamed into place complete, so a killed build
leaves no store that looks finished. Only folders with the marker are ever removed, and only the
files jaxlm writes in them.

The tokens are exactly what `lm_data.token_stream` makes in memory: one-document files are
tokenised in pieces of 256 lines, with no separator; documents each end with the tokenizer's
[SEP]/EOS when it has one. A character-level tokenizer is applied as a lookup table (checked
against the tokenizer on the first piece), the rest through `encode_batch`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from jaxlm.data.text_stream import TextFileSource, file_identity, line_groups
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import DataError

FORMAT = 1
MARKER = ".jaxlm-token-store"
FILES = ("tokens.bin", "offsets.bin", "meta.json", MARKER)  # all a store folder ever holds
BATCH_CHARS = 1 << 20  # text tokenised per encode_batch call (bounds its memory)
builds = {"count": 0}  # stores built by this process (tests check reuse with it)


def default_cache_dir() -> Path:
    """$JAXLM_TOKEN_CACHE, else $XDG_CACHE_HOME/jaxlm/tokens, else ~/.cache/jaxlm/tokens."""
    if os.environ.get("JAXLM_TOKEN_CACHE"):
        return Path(os.environ["JAXLM_TOKEN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxlm" / "tokens"


def cache_dir_for(cfg: Any) -> Path:
    """The token cache of a config: data.token_cache (relative to where jaxlm runs), else the
    default."""
    given = getattr(cfg.data, "token_cache", "")
    return Path(cfg.resolve_path(given)).expanduser() if given else default_cache_dir()


def tokenizer_hash(tok: TextTokenizer) -> str:
    """A hash of the whole tokenizer.json: any change of vocabulary or rules changes it."""
    return hashlib.sha256(tok.tokenizer.to_str().encode()).hexdigest()


def char_table(tok: TextTokenizer) -> np.ndarray | None:
    """For a character-level tokenizer (WordLevel over single characters, each character its
    own pre-token, no normalizer or added tokens): id by code point, the last entry [UNK];
    else None."""
    d = json.loads(tok.tokenizer.to_str())
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    if (model.get("type") != "WordLevel" or d.get("normalizer") or d.get("added_tokens")
            or pre.get("type") != "Split" or pre.get("pattern") != {"Regex": "[\\s\\S]"}
            or pre.get("behavior") != "Isolated" or pre.get("invert")):
        return None
    vocab = model.get("vocab") or {}
    unk = vocab.get(model.get("unk_token"))
    singles = {ord(k): v for k, v in vocab.items() if len(k) == 1}
    if unk is None or not singles:
        return None
    table = np.full(max(singles) + 2, unk, np.uint32)
    for cp, i in singles.items():
        table[cp] = i
    return table


class Encoder:
    """Text to ids as `TextTokenizer.encode_batch` would, fast for character tokenizers."""

    def __init__(self, tok: TextTokenizer):
        self.tok, self.table = tok, char_table(tok)
        self.checked = False

    def _lookup(self, text: str, step: int = 1 << 18) -> np.ndarray:
        out = np.empty(len(text), np.uint32)
        for i in range(0, len(text), step):  # in slices: small temporaries
            cp = np.frombuffer(text[i:i + step].encode("utf-32-le", "surrogatepass"), np.uint32)
            out[i:i + len(cp)] = self.table[np.minimum(cp, len(self.table) - 1)]  # else [UNK]
        return out

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """Ids of each text (no special tokens added)."""
        if self.table is not None and not self.checked:
            probe = texts[0][:1 << 14] if texts else ""
            want = np.asarray(self.tok.encode(probe), np.uint32)
            if not np.array_equal(self._lookup(probe), want):
                self.table = None  # not the tokenizer it looked like: use the tokenizer itself
            self.checked = True
        if self.table is not None:
            return [self._lookup(t) for t in texts]
        return [np.asarray(ids, np.int64) for ids in self.tok.encode_batch(texts)]


def _batches(texts: Iterator[str], chars: int = BATCH_CHARS, most: int = 1024
             ) -> Iterator[list[str]]:
    """Texts grouped into lists of at most `most` texts or about `chars` characters."""
    batch, size = [], 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= chars or len(batch) >= most:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class TokenFile:
    """A 1-D array in a raw file, sliced by positional reads (see the module docstring): what
    `RandomWindows`, `Chunks` and `np.asarray` need of an array. Thread-safe (os.pread)."""

    def __init__(self, path: Path, dtype: np.dtype, n: int):
        self.path, self.dtype, self.n = path, np.dtype(dtype), n
        self.shape = (n,)
        self._fd = os.open(path, os.O_RDONLY)  # now: a store rebuilt meanwhile is not mixed in

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int | slice) -> Any:
        if not isinstance(key, slice):
            i = int(key) + (self.n if int(key) < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(key)
            return self[i:i + 1][0]
        start, stop, step = key.indices(self.n)
        count = max(0, stop - start)
        size = self.dtype.itemsize
        raw = os.pread(self._fd, count * size, start * size) if count else b""
        if len(raw) != count * size:
            raise DataError(f"The token store file '{self.path}' is shorter than its meta.json "
                            "says (truncated while in use?). Rerun: jaxlm rebuilds it.",
                            culprit=str(self.path))
        out = np.frombuffer(raw, self.dtype.newbyteorder("<"))
        return out if step == 1 else out[::step]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class TokenStore:
    """One built store, read in place (`TokenFile`)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path, self.meta = path, meta
        self.dtype = np.dtype(meta["dtype"])
        self.tokens = TokenFile(path / "tokens.bin", self.dtype, meta["tokens"])
        self.offsets = TokenFile(path / "offsets.bin", np.dtype(np.int64), meta["docs"] + 1)

    def __len__(self) -> int:
        """The number of documents."""
        return int(self.meta["docs"])

    def document(self, i: int) -> np.ndarray:
        """Document i's ids, without the separator the stream puts after it."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.tokens[a:b - 1 if self.meta["sep"] else b]


class StoreDocuments:
    """A store's documents as a random-access source for the packed pipeline: {"ids": array}."""

    def __init__(self, store: TokenStore, name: str):
        self.store, self.name = store, name

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= int(i) < len(self):
            raise IndexError(i)
        return {"ids": np.asarray(self.store.document(int(i)), np.int32)}


def _store_key(source: TextFileSource, tok_hash: str) -> tuple[str, dict[str, Any]]:
    ident = source.identity()
    key = {"format": FORMAT, "tokenizer": tok_hash,
           **{k: v for k, v in ident.items() if k not in ("size", "mtime_ns")}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    stem = re.sub(r"[^\w.-]", "_", source.path.stem)[:40]
    return f"{stem}-{source.split}-{digest}", {**key, "size": ident["size"],
                                                "mtime_ns": ident["mtime_ns"]}


def _problem(path: Path, meta: dict[str, Any] | None, key: dict[str, Any]) -> str:
    """Why the store at `path` cannot be used as is ("" when it can)."""
    if meta is None:
        return "meta.json is missing or unreadable (a partial store)"
    if meta.get("key") != key:
        return "its source file changed since it was built (stale)"
    sizes = {"tokens.bin": meta["tokens"] * np.dtype(meta["dtype"]).itemsize,
             "offsets.bin": (meta["docs"] + 1) * 8}
    for name, want in sizes.items():
        got = (path / name).stat().st_size if (path / name).is_file() else -1
        if got != want:
            return f"{name} has {got} bytes instead of {want} (truncated or partial)"
    return ""


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / "meta.json").read_text())
        return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None
    except (OSError, ValueError):
        return None


def remove_store(path: Path) -> None:
    """Delete a store folder jaxlm wrote: only its own files, and only with its marker."""
    if not (path / MARKER).is_file():
        return
    for name in FILES:
        (path / name).unlink(missing_ok=True)
    try:
        path.rmdir()
    except OSError:
        sys.stderr.write(f"jaxlm data: left '{path}' in place: it holds files jaxlm did not "
                         "write.\n")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_leftovers(final: Path) -> None:
    """Remove temporary/replaced copies of `final` left by killed jaxlm processes."""
    for p in final.parent.glob(final.name + ".*-*"):
        m = re.fullmatch(re.escape(final.name) + r"\.(tmp|old)-(\d+)-\w+", p.name)
        if m and p.is_dir() and not _pid_alive(int(m.group(2))):
            remove_store(p)


def open_store(source: TextFileSource, tok: TextTokenizer, cache_dir: Path) -> TokenStore:
    """The store of `source` under `tok`: reused when valid, else (re)built."""
    name, key = _store_key(source, tokenizer_hash(tok))
    final = cache_dir / name
    if final.exists():
        if not (final / MARKER).is_file():
            raise DataError(
                f"'{final}' is in the token cache but was not written by jaxlm (it has no "
                f"{MARKER} marker), so jaxlm will neither use nor delete it. Move it away, or set "
                "data.token_cache (or $JAXLM_TOKEN_CACHE) to another folder.", culprit=str(final))
        meta = _read_meta(final)
        why = _problem(final, meta, key)
        if not why:
            return TokenStore(final, meta)  # type: ignore[arg-type]
        sys.stderr.write(f"jaxlm data: rebuilding the token store '{final}': {why}.\n")
    from jaxlm.atomic import writing
    with writing(cache_dir, "the token store", "Set data.token_cache (or $JAXLM_TOKEN_CACHE) "
                 "to a writable folder."):
        return _build(source, tok, final, key)


def _remove_stale(cache_dir: Path, key: dict[str, Any]) -> None:
    """Remove the stores of an earlier version of the same file (another size or mtime): no run
    can use them again, and a segment (hold-out) that moved gives them other folder names."""
    for d in cache_dir.iterdir():
        meta = _read_meta(d) if (d / MARKER).is_file() else None
        old = (meta or {}).get("key") or {}
        if old.get("path") == key["path"] and (old.get("size"), old.get("mtime_ns")) != (
                key["size"], key["mtime_ns"]):
            remove_store(d)


def _build(source: TextFileSource, tok: TextTokenizer, final: Path, key: dict[str, Any]
           ) -> TokenStore:
    from tqdm import tqdm

    final.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(final)
    _remove_stale(final.parent, key)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    tmp.mkdir()
    (tmp / MARKER).write_text("written by jaxlm (jaxlm.data.token_store)\n")
    dtype = np.dtype(np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32)
    t0 = time.perf_counter()
    sys.stderr.write(f"jaxlm data: tokenising {source.name} into the token store '{final}'\n")
    one_doc = source.documents == "file" or len(source) == 1
    sep = [] if one_doc or tok.sep_id is None else [tok.sep_id]
    total = (source.bounds()[1] - source.bounds()[0]) if source.documents == "file" else len(source)
    bar = tqdm(total=total, unit=" chars" if source.documents == "file" else " docs",
               unit_scale=True, desc="tokenising", disable=None, mininterval=2.0)
    n_tokens, ends = 0, []
    enc = Encoder(tok)
    try:
        with (tmp / "tokens.bin").open("wb") as out, (tmp / "offsets.bin").open("wb") as offs:
            offs.write(np.zeros(1, "<i8").tobytes())
            if one_doc and enc.table is not None and source.documents == "file":
                texts = source.pieces()  # one character, one token: no need to cut at lines
            elif one_doc:
                texts = (line_groups(source.pieces()) if source.documents == "file"
                         else line_groups([source[0]["text"]]) if len(source) else iter(()))
            else:
                texts = source.texts()
            for batch in _batches(texts, most=1 << 30 if one_doc else 1024):
                ids = enc.encode(batch)
                for a in ids:
                    if len(a) and a.max() >= 1 << (8 * dtype.itemsize):
                        raise DataError(f"Token id {int(a.max())} does not fit {dtype}.",
                                        culprit=source.name)
                    if sep:
                        a = np.append(a, sep)
                    out.write(a.astype(dtype.newbyteorder("<")).tobytes())
                    n_tokens += len(a)
                    if not one_doc:
                        ends.append(n_tokens)
                if not one_doc:
                    offs.write(np.asarray(ends, "<i8").tobytes())
                    ends = []
                bar.update(sum(map(len, batch)) if source.documents == "file" else len(batch))
            docs = 1 if one_doc and n_tokens else (0 if one_doc else len(source))
            if one_doc and n_tokens:
                offs.write(np.asarray([n_tokens], "<i8").tobytes())
        bar.close()
        if key["size"] != file_identity(source.path)[0] or \
                key["mtime_ns"] != file_identity(source.path)[1]:
            raise DataError(f"'{source.path}' changed while it was being tokenised. Run again "
                            "once nothing writes to it.", culprit=str(source.path))
        meta = {"format": FORMAT, "key": key, "dtype": dtype.name, "tokens": n_tokens,
                "docs": docs, "sep": bool(sep), "seconds": round(time.perf_counter() - t0, 3)}
        from jaxlm.atomic import write_text_atomic
        write_text_atomic(tmp / "meta.json", json.dumps(meta, indent=1))
        _install(tmp, final)
    except BaseException:
        bar.close()
        remove_store(tmp)
        raise
    builds["count"] += 1
    sys.stderr.write(f"jaxlm data: tokenised {n_tokens:,} tokens in {meta['seconds']:.1f} s "
                     f"into '{final}'\n")
    return TokenStore(final, _read_meta(final) or meta)


def _install(tmp: Path, final: Path) -> None:
    """Rename the finished `tmp` onto `final` (a stale store there is moved aside, then removed);
    if another process installed one meanwhile, keep theirs."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        remove_store(tmp)  # a concurrent build won the rename; both are the same tokens
    if old is not None:
        remove_store(old)
