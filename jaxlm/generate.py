"""Text generation from causal language models: `generate`, `generate_ids` and `Generator`.

    from jaxlm.generate import generate
    from jaxlm.loading import load_model
    lm = load_model("runs/shakespeare_char")     # a run directory, a Hugging Face folder, hf:gpt2
    print(generate(lm.model, lm.tokenizer, "ROMEO:", max_new_tokens=200, temperature=0.8, top_k=40))

Decoding uses a fixed-size key/value cache (`jaxlm.generation.decode`): a jitted prefill, then a
jitted while loop, compiled once per shape. Streaming (`on_text` / `on_tokens`) runs the same
compiled loop in chunks of `chunk` tokens and reports each chunk as it arrives.

A model only knows positions below its context length (`model.max_len`; learned GPT-2 positions
stop there). When prompt + new tokens do not fit, generation runs in windows: the cache is filled
to the context length, then refilled from the last 3/4 of the context, and so on; every token is
still predicted from at least 3/4 of a context of real text, at positions the model was trained on.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import jax
import numpy as np
from flax import nnx

from jaxlm.data.tokenizer import TextTokenizer
from jaxlm.errors import CheckpointError, ConfigError
from jaxlm.generation.decode import decoder_for
from jaxlm.generation.sampling import Sampling
from jaxlm.sharding import shard_params, use_mesh

__all__ = ["Generator", "generate", "generate_ids", "Sampling"]

TokenCallback = Callable[[int, list[int]], None]  # (row, new token ids)
TextCallback = Callable[[int, str], None]  # (row, new text)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class Generator:
    """A causal LM ready to generate: structure, (optionally sharded) parameters and the compiled
    decode functions, which are reused by every call with the same shapes.

    model: a `CausalLM`, or a (graphdef, params) pair from `nnx.split(model, nnx.Param)`.
    mesh/rules: shard the parameters like training (`jaxlm.sharding.state_shardings`) and run
    under that mesh. context_len: positions the model may use (default: its `max_len`).
    """

    def __init__(self, model: Any, tokenizer: TextTokenizer | None = None, *, mesh=None,
                 rules: dict | None = None, context_len: int | None = None,
                 batch_size: int = 8, bucket: int = 8):
        if isinstance(model, tuple):
            graphdef, params = model
            model = nnx.merge(graphdef, params)
        if not hasattr(model, "lm_head"):
            raise ConfigError(f"Generation needs a causal language model (CausalLM), got "
                              f"{type(model).__name__}. Pass a model trained with "
                              "train.task=causal, or an imported GPT-2/Llama checkpoint.",
                              culprit=type(model).__name__)
        graphdef, params = nnx.split(model, nnx.Param)
        self.mesh, self.rules = mesh, rules
        if mesh is not None:
            params, _ = shard_params(params, mesh, rules)
        self.params, self.cfg = params, model.backbone.cfg
        self.tokenizer = tokenizer
        self.context_len = context_len or self.cfg.max_len
        if self.cfg.position == "learned" and self.context_len > self.cfg.max_len:
            raise ConfigError(f"context_len={self.context_len} exceeds the model's "
                              f"{self.cfg.max_len} learned positions. Leave it unset or lower it.",
                              culprit="context_len")
        if self.context_len < 2:
            raise ConfigError(f"context_len must be at least 2, got {self.context_len}.",
                              culprit="context_len")
        self.keep = max(1, (3 * self.context_len) // 4)
        self.batch_size, self.bucket = batch_size, bucket
        self.decoder = decoder_for(graphdef)
        pad = tokenizer.pad_id if tokenizer is not None else None
        self.filler = pad if pad is not None and pad < self.cfg.vocab_size else 0

    # ------------------------------------------------------------------------------------------
    def generate_ids(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 64,
                     temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                     stop_ids: Sequence[int] = (), on_tokens: TokenCallback | None = None,
                     chunk: int = 16) -> list[list[int]]:
        """New token ids for each prompt (token ids), without the stop token that ended a row."""
        sampling = Sampling(temperature, top_k, top_p)
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}.",
                              culprit="max_new_tokens")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ConfigError(f"Prompt {i} is empty (no tokens). Give at least one token of "
                                  "text to continue.", culprit=f"prompt {i}")
            if max(p) >= self.cfg.vocab_size or min(p) < 0:
                raise ConfigError(f"Prompt {i} has token ids outside the model's vocabulary "
                                  f"(0..{self.cfg.vocab_size - 1}). Encode it with the run's "
                                  "tokenizer.", culprit=f"prompt {i}")
        stop = np.full(max(1, len(stop_ids)), -1, np.int32)
        stop[:len(stop_ids)] = list(stop_ids)
        key = jax.random.key(seed)
        out: list[list[int]] = []
        B = min(self.batch_size, len(prompts)) if len(prompts) > 0 else 0
        with use_mesh(self.mesh, self.rules):
            for g, start in enumerate(range(0, len(prompts), max(B, 1))):
                group = [list(p) for p in prompts[start:start + B]]
                real = len(group)
                group += [[self.filler]] * (B - real)  # pad the last group: same shapes
                cb = None if on_tokens is None else (
                    lambda b, ids, s=start, r=real: on_tokens(s + b, ids) if b < r else None)
                rows = self._run_group(group, [False] * real + [True] * (B - real),
                                       max_new_tokens, sampling, (key, g), stop, cb, chunk)
                out.extend(rows[:real])
        return out

    def _run_group(self, prompts: list[list[int]], done: list[bool], num_new: int,
                   sampling: Sampling, key: tuple[jax.Array, int], stop: np.ndarray,
                   on_tokens: TokenCallback | None, chunk: int) -> list[list[int]]:
        """Generate for one batch of prompts, window after window (see the module docstring).
        key: the PRNG key and this group's number (the prefill folds in the group, then the
        window)."""
        B, limit = len(prompts), self.context_len
        gen: list[list[int]] = [[] for _ in range(B)]
        done = list(done)
        remaining, window = num_new, 0
        stop_set = set(int(s) for s in stop if s >= 0)
        while remaining > 0 and not all(done):
            ctx = [p + g for p, g in zip(prompts, gen)]
            L = max(len(c) for c in ctx)
            if L + remaining - 1 <= limit:  # the rest fits in one cache
                P, N = min(_round_up(L, self.bucket), limit - remaining + 1), remaining
            else:
                P = min(L, limit - 1 if window == 0 else self.keep)
                N = limit - P + 1
            tokens = np.full((B, P), self.filler, np.int32)
            pad = np.zeros(B, np.int32)
            for b, c in enumerate(ctx):
                c = c[-P:]
                pad[b] = P - len(c)
                tokens[b, pad[b]:] = c
            target = min(N, remaining)
            state = self.decoder.prefill(self.params, tokens, pad, np.asarray(done), key[0],
                                         np.array([key[1], window], np.int32), stop, num_new=N,
                                         sampling=sampling, filler=self.filler)
            consumed, step = 0, 1
            while True:
                stop_at = min(step + chunk, target) if on_tokens is not None else target
                state = self.decoder.decode(self.params, state, np.int32(stop_at),
                                            sampling=sampling, filler=self.filler)
                step = int(state["step"])
                if bool(state["nonfinite"]):
                    raise CheckpointError(
                        "The model gave non-finite logits (NaN or Inf) while generating: its "
                        "parameters are damaged or too large (training diverged before the "
                        "checkpoint was saved), so every token it samples is meaningless. Pick an "
                        "earlier checkpoint with --checkpoint STEP (`jaxlm info --run RUN_DIR` "
                        "lists the steps).", culprit="checkpoint")
                new = np.array(state["out"])[:, consumed:step]  # a host copy, before donation
                for b in range(B):
                    if done[b]:
                        continue
                    ids = [int(t) for t in new[b]]
                    hit = next((i for i, t in enumerate(ids) if t in stop_set), None)
                    if hit is not None:
                        ids, done[b] = ids[:hit], True
                    gen[b].extend(ids)
                    if on_tokens is not None and ids:
                        on_tokens(b, ids)
                consumed = step
                if step >= target or bool(np.all(np.asarray(state["done"]))):
                    break
            remaining -= step
            window += 1
        return gen

    # ------------------------------------------------------------------------------------------
    def generate(self, prompts: str | Sequence[str], *, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 stop: Sequence[int | str] | None = None, on_text: TextCallback | None = None,
                 chunk: int = 16) -> str | list[str]:
        """Continuations of text prompts (a str for a str prompt, else a list).

        stop: token ids or token strings that end a row (default: the tokenizer's end-of-text
        token, if it has one). on_text(row, text) receives each piece of text as it arrives.
        """
        tok = self._need_tokenizer()
        single = isinstance(prompts, str)
        texts = [prompts] if single else list(prompts)
        warn_unknown(tok, texts)
        ids = tok.encode_batch(texts, add_special_tokens=True)
        for i, p in enumerate(ids):
            if not p and tok.cls_id is not None:
                ids[i] = [tok.cls_id]  # an empty prompt starts from the begin-of-text token
        stop_ids = self.stop_ids(stop)
        streams = [_TextStream(tok) for _ in texts]

        def push(row: int, new_ids: list[int]) -> None:
            piece = streams[row].push(new_ids)
            if piece and on_text is not None:
                on_text(row, piece)

        out_ids = self.generate_ids(ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids,
                                    on_tokens=push if on_text is not None else None, chunk=chunk)
        outs = [tok.decode(o) for o in out_ids]
        if on_text is not None:
            for row, (s, full) in enumerate(zip(streams, outs)):
                rest = full[len(s.emitted):] if full.startswith(s.emitted) else ""
                if rest:
                    on_text(row, rest)
        return outs[0] if single else outs

    def stop_ids(self, stop: Sequence[int | str] | None) -> list[int]:
        """Token ids for `stop` (ids or token strings); None: the end-of-text token if any."""
        tok = self.tokenizer
        if stop is None:
            return [tok.sep_id] if tok is not None and tok.sep_id is not None else []
        out = []
        for s in stop:
            if isinstance(s, int):
                out.append(s)
                continue
            tid = self._need_tokenizer().tokenizer.token_to_id(s)
            if tid is None:
                enc = self._need_tokenizer().encode(s)
                if len(enc) != 1:
                    raise ConfigError(f"Stop token {s!r} is not a single token of this "
                                      f"tokenizer (it encodes to {len(enc)} tokens). Pass a token "
                                      "from the vocabulary, e.g. '\\n' for a char model.",
                                      culprit=s)
                tid = enc[0]
            out.append(tid)
        return out

    def _need_tokenizer(self) -> TextTokenizer:
        if self.tokenizer is None:
            raise ConfigError("Text generation needs the model's tokenizer: pass `tokenizer=` "
                              "(e.g. from load_model), or use generate_ids with token ids.",
                              culprit="tokenizer")
        return self.tokenizer


class _TextStream:
    """Turns token ids arriving in pieces into text pieces. It decodes everything so far and
    emits what is new, holding back a trailing partial character (byte-level BPE)."""

    def __init__(self, tok: TextTokenizer):
        self.tok, self.ids, self.emitted = tok, [], ""

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted):], text
        return piece


def unknown_pieces(tok: TextTokenizer, texts: Sequence[str]) -> list[str]:
    """The pieces of `texts` the tokenizer can only encode as its unknown token ([UNK]), each
    once, in order of appearance (e.g. characters outside a character vocabulary)."""
    if tok.unk_id is None:
        return []
    found: dict[str, None] = {}
    for text, enc in zip(texts, tok.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        for i, (start, end) in zip(enc.ids, enc.offsets):
            if i == tok.unk_id:
                found.setdefault(text[start:end], None)
    return list(found)


_warned: set[str] = set()


def warn_unknown(tok: TextTokenizer, texts: Sequence[str]) -> None:
    """One line on stderr naming the prompt pieces that become the unknown token, which the
    model sees as one symbol (the generation then continues from a prompt other than the one
    typed); each piece is named once per process."""
    pieces = [p for p in unknown_pieces(tok, texts) if p not in _warned]
    _warned.update(pieces)
    if pieces:
        shown = " ".join(repr(p) for p in pieces[:20]) + (" ..." if len(pieces) > 20 else "")
        sys.stderr.write(f"jaxlm: warning: the prompt holds {len(pieces)} piece(s) outside the "
                         f"tokenizer's vocabulary, read as {tok.tokenizer.id_to_token(tok.unk_id)}"
                         f": {shown}\n")


def generate(model: Any, tokenizer: TextTokenizer, prompts: str | Sequence[str], **kw: Any
             ) -> str | list[str]:
    """Continue text prompts with a causal LM (see `Generator.generate` for the options;
    `mesh`, `rules`, `context_len`, `batch_size` go to the Generator)."""
    gen_kw = {k: kw.pop(k) for k in ("mesh", "rules", "context_len", "batch_size") if k in kw}
    return Generator(model, tokenizer, **gen_kw).generate(prompts, **kw)


def generate_ids(model: Any, prompts: Sequence[Sequence[int]], **kw: Any) -> list[list[int]]:
    """Continue token-id prompts with a causal LM (see `Generator.generate_ids`)."""
    gen_kw = {k: kw.pop(k) for k in ("mesh", "rules", "context_len", "batch_size") if k in kw}
    return Generator(model, None, **gen_kw).generate_ids(prompts, **kw)
