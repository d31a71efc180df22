"""CHILDES -> dialogue units -> splits -> byte-level BPE -> packed token arrays.

  sources.py     config.data.childes -> transcript items (ZIP members, files, URLs) -> text
  transcript.py  one transcript: header checks, pylangacq parse, roles, tags, cleaned utterances
  chat.py        CHAT main-tier cleaning and lexical-word counting
  units.py       triplets and transcript-level splits
  reader.py      all transcripts through a process pool
  bpe.py         tokenizer training, Hugging Face files, packed tokens + word-start mask
  iterator.py    TokenIterator over the packed arrays (deterministic, saveable state)
  prepare.py     the `prepare` mode: run(), ensure_prepared(), DIR/data outputs
"""
