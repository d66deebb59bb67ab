"""The peer of `jaxlm generate` in benchmarks/headline.py: greedy `transformers` `generate` (with
its KV cache) on the same weights, exported from the jaxlm run by `jaxlm export`, from the same
prompt ids (the run's tokenizer.json through the `tokenizers` library).

A model knows only n_positions positions (64 for the main job), fewer than the new tokens asked
for, so this runs `generate` window after window exactly as `jaxlm.generate.Generator` does: the
first window continues the prompt (cut to n_positions - 1 tokens) until the cache is full; every
later one restarts from the last 3/4 of the context. Greedy decoding on the same weights then gives
the same tokens on both sides, up to float rounding between ties.

Run whole as a process by the harness (import, load, generate, write), as a user would run it:

    .venv/bin/python benchmarks/generate_hf_reference.py --model HF_DIR --prompt "ROMEO:"
        [--max-new-tokens 500] [--out generated.json]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def windowed_greedy(model, prompt: list[int], num_new: int, stop: set[int]) -> list[int]:
    """`Generator._run_group`'s windows for one prompt, each window one `generate` call."""
    import torch

    limit = model.config.n_positions
    keep = max(1, (3 * limit) // 4)
    gen: list[int] = []
    remaining, window = num_new, 0
    while remaining > 0:
        ctx = prompt + gen
        if len(ctx) + remaining - 1 <= limit:
            P, N = len(ctx), remaining
        else:
            P = min(len(ctx), limit - 1 if window == 0 else keep)
            N = limit - P + 1
        target = min(N, remaining)
        ids = torch.tensor([ctx[-P:]])
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=target,
                                 do_sample=False, use_cache=True, pad_token_id=0,
                                 eos_token_id=sorted(stop) or None)
        new = out[0, P:].tolist()
        hit = next((i for i, t in enumerate(new) if t in stop), None)
        if hit is not None:
            return gen + new[:hit]
        gen.extend(new)
        remaining -= len(new)
        window += 1
    return gen


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a GPT2LMHeadModel folder (jaxlm export)")
    ap.add_argument("--tokenizer", help="tokenizer.json (default: the one in --model)")
    ap.add_argument("--prompt", default="ROMEO:")
    ap.add_argument("--max-new-tokens", type=int, default=500)
    ap.add_argument("--out", help="write {prompt_ids, ids, completion, ...} here as JSON")
    args = ap.parse_args(argv)

    import torch
    from tokenizers import Tokenizer
    from transformers import GPT2LMHeadModel

    tok = Tokenizer.from_file(args.tokenizer or str(Path(args.model) / "tokenizer.json"))
    model = GPT2LMHeadModel.from_pretrained(args.model).eval()
    prompt = tok.encode(args.prompt, add_special_tokens=True).ids
    eos = model.config.eos_token_id
    stop = {eos} if isinstance(eos, int) else set(eos or ())
    tg = time.time()
    ids = windowed_greedy(model, prompt, args.max_new_tokens, stop)
    generate_s = time.time() - tg
    text = tok.decode(ids, skip_special_tokens=True)
    print(args.prompt + text)
    report = {"prompt": args.prompt, "prompt_ids": prompt, "ids": ids, "completion": text,
              "generate_s": generate_s, "process_s_from_main": time.time() - t0,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.out:
        Path(args.out).write_text(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
