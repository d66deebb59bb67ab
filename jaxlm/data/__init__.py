"""Data: dataset specs and sources, tokenizers, and grain input pipelines.

- `sources`: specs (`tfds:NAME[/CONFIG][:SPLIT]`, `text:`, `labeled:`, `tsv:`, `csv:`, `jsonl:`)
  -> random-access `Source`s of {"text", "label"}; `local` reads the files, `text` decodes them.
- `tfds_build`: local files -> a real TFDS dataset (array_record) readable as `tfds:NAME`.
- `tokenizer`: train (char, BPE, WordPiece, Unigram) or load any Hugging Face tokenizer.json.
- `lm_pipeline`: random windows over a token stream; `packing`: documents packed into rows with
  segment ids and positions; `masking`: BERT masking; `lm_data`: pretraining data from a config.
- `classification`: length-bucketed classification batches and exactly-once evaluation batches.
- `iterators`: the checkpointable iterator every training pipeline hands to the loop.
"""
