"""Generative fine-tuning data: (prompt, target) token pairs, packed or padded into rows.

An example is prompt ids + target ids + the end token. Its row holds inputs = ids[:-1] and
targets = ids[1:]; weights are 1 exactly where the target is a target token or the end token, so
the loss (`jaxlm.tasks.losses.token_loss`) never scores the prompt. Packed rows hold several whole
examples: segment ids (1, 2, ... per example, 0 for padding) keep attention inside each example
and positions restart at 0, so an example is scored as if it were alone in its row.

Training order: a seeded permutation of the examples per epoch; packed, the epoch's examples are
placed first-fit into a window of open rows (`OPEN_ROWS`), in that order. Global batch s is rows
s*B ... s*B+B-1 of that stream and host h takes its B/P of them, so the data a step sees is a
function of (seed, step) alone: the iterator position in a checkpoint resumes it exactly.
"""
from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import grain
import numpy as np

from jaxlm.data.classification import default_buckets, length_bucket
from jaxlm.data.iterators import Batches
from jaxlm.data.records import RecordSource
from jaxlm.data.templates import Templates
from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import DataError

OPEN_ROWS = 16  # rows open for first-fit packing at once (more: fuller rows, slower planning)
KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


@dataclass
class Pairs:
    """A split encoded: token ids and prompt length per kept example, and their texts."""

    ids: list[np.ndarray] = field(default_factory=list)  # prompt + target + end
    prompt_lens: list[int] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def prompt_ids(self, i: int) -> list[int]:
        """Example i's prompt tokens (what generation starts from)."""
        return self.ids[i][:self.prompt_lens[i]].tolist()

    def target_len(self, i: int) -> int:
        """Example i's target tokens, end token included."""
        return len(self.ids[i]) - self.prompt_lens[i]


def special_tokens(tok: TextTokenizer) -> dict[str, str]:
    """Chat-template variables: the begin / end token strings of the tokenizer."""
    out = {}
    for name, tid in (("bos_token", tok.cls_id), ("eos_token", tok.sep_id)):
        if tid is not None:
            out[name] = tok.tokenizer.id_to_token(tid)
    return out


def leading_specials(tok: TextTokenizer) -> list[int]:
    """The special tokens the tokenizer itself puts before a text (Llama's <s>; none for GPT-2
    or jaxlm's own tokenizers), which a prompt starts with as in pretraining."""
    if tok.cls_id is None:
        return []
    with_specials = tok.encode("a", add_special_tokens=True)
    return [tok.cls_id] if with_specials and with_specials[0] == tok.cls_id else []


def end_id(tok: TextTokenizer) -> int:
    """The token that ends a target (and stops generation)."""
    if tok.sep_id is None:
        raise DataError("The tokenizer has no end-of-sequence token ([SEP], </s>, <|endoftext|> "
                        "or <|end_of_text|>), so the model could not learn where an answer ends. "
                        "Use a tokenizer with one (jaxlm's own tokenizers have [SEP]).",
                        culprit="data.tokenizer")
    return tok.sep_id


class _Problems:
    """Invalid records, counted with the first few places, then raised or reported at once."""

    def __init__(self, source: RecordSource):
        self.source, self.counts, self.places = source, {}, {}

    def add(self, problem: str, i: int) -> None:
        self.counts[problem] = self.counts.get(problem, 0) + 1
        self.places.setdefault(problem, [])
        if len(self.places[problem]) < 3:
            self.places[problem].append(self.source.where(i))

    def describe(self) -> str:
        n = len(self.source)
        return "; ".join(f"{c:,} of {n:,} records {p} (e.g. {', '.join(self.places[p])})"
                         for p, c in self.counts.items())


def _template_texts(source: RecordSource, templates: Templates, special: dict[str, str],
                    on_invalid: str) -> tuple[list[int], list[str], list[str]]:
    """(kept record indices, prompt texts, target texts); records lacking a field the templates
    name or with an empty target are an error, or skipped and counted with on_invalid=report."""
    problems = _Problems(source)
    keep, prompts, targets = [], [], []
    for i in range(len(source)):
        record = source[i]
        missing = templates.missing(record)
        if missing:
            problems.add(f"lack the field{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(repr(m) for m in missing)}", i)
            continue
        prompt, target = templates.texts(record, special)
        if not target.strip():
            problems.add("have an empty target", i)
            continue
        keep.append(i)
        prompts.append(prompt)
        targets.append(target)
    if problems.counts:
        fields = ", ".join(source.fields())
        text = (f"{source.name}: {problems.describe()}. The templates name "
                f"{', '.join(templates.fields)}; the records have {fields}.")
        if on_invalid == "error" or not keep:
            raise DataError(text + " Fix the data or generative.prompt_template / target_template, "
                            "or set data.on_invalid: report to leave such records out.",
                            culprit=source.name)
        sys.stderr.write(f"jaxlm data: warning: {text} They are left out.\n")
    return keep, prompts, targets


def encode_pairs(source: RecordSource, tok: TextTokenizer, templates: Templates, *, seq_len: int,
                 overlong: str = "error", on_invalid: str = "error") -> Pairs:
    """Every usable record of `source` as token ids (see `Pairs`), in order.

    overlong: what to do with an example longer than seq_len + 1 tokens (a row's inputs and
    targets are the ids shifted by one): "error" (count them and say what to set),
    "truncate_left" (drop prompt tokens from the left, after a leading begin token) or "skip".
    """
    keep, prompts, targets = _template_texts(source, templates, special_tokens(tok), on_invalid)
    lead, end = leading_specials(tok), end_id(tok)
    p_ids = _prompt_ids(tok, prompts)
    t_ids = tok.encode_batch(targets)
    out, too_long, no_room = Pairs(), [], []
    limit = seq_len + 1
    for k, (p, t) in enumerate(zip(p_ids, t_ids)):
        t = t + [end]
        if len(p) + len(t) > limit:
            room = limit - len(t) - len(lead)
            if overlong != "truncate_left" or room < 1:
                (too_long if room >= 1 or overlong == "error" else no_room).append(keep[k])
                continue
            p = lead + p[len(p) - room:]
        out.ids.append(np.asarray(p + t, np.int32))
        out.prompt_lens.append(len(p))
        out.prompts.append(prompts[k])
        out.targets.append(targets[k])
    _overlong_report(source, too_long, no_room, overlong, seq_len, out)
    return out


def _prompt_ids(tok: TextTokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt texts as the token ids an example starts with (the leading specials, then the
    text's tokens): one encoding for training, evaluation and prediction."""
    lead = leading_specials(tok)
    return [lead + p for p in tok.encode_batch(prompts)]


def encode_prompts(records: Sequence[dict[str, str]], tok: TextTokenizer,
                   templates: Templates) -> list[list[int]]:
    """The prompt token ids of records (fields the target template names may be absent), exactly
    as training encodes them (before any generative.overlong truncation)."""
    special = special_tokens(tok)
    return _prompt_ids(tok, [templates.prompt_text(r, special) for r in records])


def prompt_records(lines: Sequence[str], templates: Templates, name: str = "input"
                   ) -> list[tuple[Any, dict[str, str]]]:
    """(input as given, record) for each non-blank line of a prediction input: a line holding a
    JSON object is the record; any other line is the value of the one field the prompt template
    names. Every record needs the fields the prompt template names (a DataError otherwise)."""
    import json

    from jaxlm.data.records import as_text

    fields, out = templates.prompt_fields, []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            given: Any = json.loads(line)
        except ValueError:
            given = None
        if isinstance(given, dict):
            record = {str(k): as_text(v) for k, v in given.items() if v is not None}
        elif len(fields) == 1:
            given, record = line, {fields[0]: line}
        else:
            raise DataError(
                f"{name}:{n} is plain text, but the run's prompt template {templates.prompt!r} "
                f"names {len(fields)} fields ({', '.join(fields) or 'none'}), so a plain line "
                "cannot fill it. Give one JSON object per line with those fields, e.g. "
                f"{json.dumps({f: '...' for f in fields})}.", culprit=f"{name}:{n}")
        missing = [f for f in fields if f not in record]
        if missing:
            raise DataError(
                f"{name}:{n} lacks the field{'s' if len(missing) > 1 else ''} "
                f"{', '.join(map(repr, missing))} that the run's prompt template "
                f"{templates.prompt!r} names (the record has {', '.join(record) or 'no fields'}). "
                "Give every input those fields.", culprit=f"{name}:{n}")
        out.append((given, record))
    return out


def _overlong_report(source: RecordSource, too_long: list[int], no_room: list[int], overlong: str,
                     seq_len: int, out: Pairs) -> None:
    places = lambda ids: ", ".join(source.where(i) for i in ids[:3])  # noqa: E731
    if too_long and overlong == "error":
        raise DataError(
            f"{source.name}: {len(too_long):,} of {len(source):,} records do not fit data.seq_len="
            f"{seq_len} (prompt + target + end token; e.g. {places(too_long)}). Raise "
            "data.seq_len, or set generative.overlong: truncate_left (drop prompt tokens from the "
            "left) or skip (leave those records out).", culprit="generative.overlong")
    for ids, why in ((too_long, "longer than data.seq_len"),
                     (no_room, "whose target alone fills data.seq_len")):
        if ids:
            out.skipped[why] = len(ids)
            sys.stderr.write(f"jaxlm data: warning: {source.name}: left out {len(ids):,} records "
                             f"{why}={seq_len} (e.g. {places(ids)}).\n")
    if not out.ids:
        raise DataError(f"{source.name}: no record fits data.seq_len={seq_len}. Raise it.",
                        culprit="data.seq_len")


def rows_of(pairs: Pairs, groups: Sequence[Sequence[int]], length: int) -> dict[str, np.ndarray]:
    """Rows of `length` holding the examples of each group (-1 or an empty group: a padding
    row, weight 0)."""
    out = {k: np.zeros((len(groups), length), np.float32 if k == "weights" else np.int32)
           for k in KEYS}
    for r, group in enumerate(groups):
        at = 0
        for seg, i in enumerate((i for i in group if i >= 0), 1):
            x, p = pairs.ids[i], pairs.prompt_lens[i]
            n = len(x) - 1
            out["inputs"][r, at:at + n] = x[:-1]
            out["targets"][r, at:at + n] = x[1:]
            out["weights"][r, at + p - 1:at + n] = 1.0
            out["segment_ids"][r, at:at + n] = seg
            out["positions"][r, at:at + n] = np.arange(n)
            at += n
    return out


def pack_epoch(lengths: np.ndarray, order: np.ndarray, capacity: int) -> list[list[int]]:
    """First-fit placement of examples (in `order`) into rows of `capacity` tokens, with at most
    OPEN_ROWS rows open; when none has room the fullest open row is closed."""
    done: list[list[int]] = []
    open_rows: list[list[int]] = []
    room: list[int] = []
    for i in order.tolist():
        n = int(lengths[i])
        slot = next((r for r, free in enumerate(room) if free >= n), None)
        if slot is None:
            if len(open_rows) == OPEN_ROWS:
                full = int(np.argmin(room))
                done.append(open_rows.pop(full))
                room.pop(full)
            open_rows.append([])
            room.append(capacity)
            slot = len(open_rows) - 1
        open_rows[slot].append(i)
        room[slot] -= n
    return done + open_rows


class _RowStream:
    """The endless stream of training rows: epoch e is a permutation seeded by (seed, e), packed
    (or one example per row). Epochs are planned on first use, under a lock (grain reads rows
    from worker threads)."""

    def __init__(self, pairs: Pairs, seq_len: int, seed: int, packed: bool):
        self.lengths = np.array([len(x) - 1 for x in pairs.ids])
        self.seq_len, self.seed, self.packed = seq_len, seed, packed
        self.rows: list[list[int]] = []
        self.epochs = 0
        self.lock = threading.Lock()

    def _plan(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
        if self.packed:
            return pack_epoch(self.lengths, order, self.seq_len)
        return [[i] for i in order.tolist()]

    def __getitem__(self, g: int) -> list[int]:
        with self.lock:
            while g >= len(self.rows):
                self.rows.extend(self._plan(self.epochs))
                self.epochs += 1
            return self.rows[g]


def train_dataset(pairs: Pairs, *, seq_len: int, global_batch: int, num_steps: int, seed: int,
                  packed: bool = True, process_index: int = 0, process_count: int = 1,
                  prefetch: int = 4) -> Batches:
    """This host's training batches for `num_steps` steps. Packed rows are seq_len long; padded
    rows take the smallest power-of-two bucket that holds the global batch's longest example."""
    if global_batch % process_count:
        raise DataError(f"train.batch_size={global_batch} must divide evenly across "
                        f"{process_count} hosts.", culprit="train.batch_size")
    stream = _RowStream(pairs, seq_len, seed, packed)
    buckets = default_buckets(seq_len)
    b = global_batch // process_count

    def make(step: int) -> dict[str, np.ndarray]:
        groups = [stream[step * global_batch + j] for j in range(global_batch)]
        length = seq_len if packed else length_bucket(
            max(int(stream.lengths[g[0]]) for g in groups), buckets)
        return rows_of(pairs, groups[process_index * b:(process_index + 1) * b], length)

    ds = grain.MapDataset.range(num_steps).map(make)
    return Batches(ds.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                        prefetch_buffer_size=prefetch)))


class EvalBatches(list):
    """Evaluation batches (a list of host batches) that remember their examples, so the task's
    evaluation can generate from the same prompts and score against the same targets."""

    def __init__(self, batches: list[dict[str, np.ndarray]], pairs: Pairs, count: int):
        super().__init__(batches)
        self.pairs, self.count = pairs, count


def eval_batches(pairs: Pairs, *, seq_len: int, global_batch: int, max_batches: int = 0,
                 process_index: int = 0, process_count: int = 1) -> EvalBatches:
    """Every example once, in order, one per row (padding rows weigh 0), each batch padded to the
    power-of-two bucket of its longest example; at most `max_batches` batches when set."""
    if global_batch % process_count:
        raise DataError(f"The eval batch size {global_batch} must divide evenly across "
                        f"{process_count} hosts.", culprit="train.eval_batch_size")
    n = len(pairs)
    n_batches = math.ceil(n / global_batch)
    if max_batches:
        n_batches = min(n_batches, max_batches)
    buckets, b = default_buckets(seq_len), global_batch // process_count
    out = []
    for s in range(n_batches):
        idx = [i if i < n else -1 for i in range(s * global_batch, (s + 1) * global_batch)]
        longest = max(len(pairs.ids[i]) - 1 for i in idx if i >= 0)
        mine = idx[process_index * b:(process_index + 1) * b]
        out.append(rows_of(pairs, [[i] for i in mine], length_bucket(longest, buckets)))
    return EvalBatches(out, pairs, min(n, n_batches * global_batch))


def max_target_tokens(pairs: Pairs) -> int:
    """The longest target of a split, end token included."""
    return max(pairs.target_len(i) for i in range(len(pairs)))


def describe(pairs: Pairs) -> dict[str, Any]:
    """Counts for logs: examples, mean prompt and target tokens, records left out."""
    n = max(len(pairs), 1)
    return {"examples": len(pairs), "skipped": dict(pairs.skipped),
            "prompt_tokens": sum(pairs.prompt_lens) / n,
            "target_tokens": sum(pairs.target_len(i) for i in range(len(pairs))) / n}
