"""Byte-level BPE vocabulary and tokenisation into flat token-id arrays."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import regex
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tasks.errors import InputError

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 0  # the first special token; also the model's eos and pad id
# How the ByteLevel pre-tokenizer splits text into pieces (GPT-2's pattern: a word with its leading
# space, a number, a run of punctuation or of spaces), which tokenizers runs with Oniguruma
PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
ASCII = "".join(map(chr, range(128)))


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False)


def train_tokenizer(train_texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on the training split only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(train_texts, trainer)
    learned = tokenizer.get_vocab_size()
    if learned < vocab_size:
        raise InputError(
            f"vocab.size: the corpus fills only {learned} of {vocab_size} entries; "
            f"lower vocab.size to at most {learned} or add text."
        )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """Save so that `PreTrainedTokenizerFast.from_pretrained(folder)` (and AutoTokenizer) load it: the
    tokenizer's own file and the configuration that names its class and special tokens. Written here,
    not by transformers' `save_pretrained`, which would import transformers (0.4 s of CPU) into the
    flow's process for two files."""
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": END_OF_TEXT,
        "pad_token": END_OF_TEXT,
        "clean_up_tokenization_spaces": False,  # byte-level BPE decodes exactly; no space is tidied away
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_tokenizer(folder: Path) -> Tokenizer:
    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def encode_documents(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """One flat uint16 stream: each document's ids followed by the end-of-text id."""
    if _splits_into_pieces(tokenizer, texts):
        return _encoded_by_piece(tokenizer, texts)
    return _encoded_whole(tokenizer, texts)


def _encoded_by_piece(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    """Each distinct piece (PIECES) encoded once: BPE merges within a piece only, so a document's ids
    are its pieces' ids in order. 1.5 s of CPU for the default corpus's training split (2.1M pieces,
    34k distinct), against 4.2 s on one thread and 5-6.6 s on two for the tokenizer's own encoding of
    the documents, whose pre-tokenizing and Encoding objects alone take 3 s."""
    index: dict[str, int] = {}  # each distinct piece's number, in order of first appearance

    def piece_positions():
        for text in texts:
            for piece in PIECES.findall(text):
                yield index.setdefault(piece, len(index))
            yield index.setdefault(END_OF_TEXT, len(index))  # encoded as the special token's id

    order = np.fromiter(piece_positions(), dtype=np.int64)
    encodings = tokenizer.encode_batch_fast(list(index))
    lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
    ids = itertools.chain.from_iterable(e.ids for e in encodings)
    piece_ids = np.fromiter(ids, dtype=np.uint16, count=int(lengths.sum()))
    piece_starts = np.cumsum(lengths) - lengths  # where each piece's ids begin in piece_ids
    counts = lengths[order]  # the ids of each piece in the stream, in order
    stream_starts = np.cumsum(counts) - counts  # where they begin in the stream
    within_piece = np.arange(counts.sum()) - np.repeat(stream_starts, counts)
    return piece_ids[np.repeat(piece_starts[order], counts) + within_piece]


def _splits_into_pieces(tokenizer: Tokenizer, texts: list[str]) -> bool:
    """Whether the tokenizer splits these texts into PIECES: it pre-tokenizes as train_tokenizer's
    do, with no normalizer; no text holds a special token's text (split out before the pieces); and
    each character of the texts (and of ASCII) falls in the same class, letter, number, space or
    other, for Python's regex module as for Oniguruma. Their Unicode versions differ: regex 2026.11
    and tokenizers 0.23 class 17,480 code points apart, all of them unassigned in Unicode 14."""
    if tokenizer.normalizer is not None or tokenizer.pre_tokenizer is None:
        return False
    if tokenizer.pre_tokenizer.__getstate__() != _pre_tokenizer().__getstate__():
        return False
    specials = [token.content for token in tokenizer.get_added_tokens_decoder().values()]
    if any(special in text for special in specials for text in texts):
        return False
    characters = set(ASCII)
    for text in texts:
        if not text.isascii():
            characters.update(text)
    # each character between a letter and a digit, doubled after a space, alone between spaces
    probe = "".join(f"a{c}1 {c}{c}  {c}\n'{c}s " for c in sorted(characters))
    theirs = [span for _, span in tokenizer.pre_tokenizer.pre_tokenize_str(probe)]
    return theirs == [match.span() for match in PIECES.finditer(probe)]


def _encoded_whole(tokenizer: Tokenizer, texts: list[str]) -> np.ndarray:
    encodings = tokenizer.encode_batch_fast(texts)
    lengths = [len(e.ids) + 1 for e in encodings]
    stream = np.empty(sum(lengths), dtype=np.uint16)
    position = 0
    for encoding, length in zip(encodings, lengths, strict=True):
        stream[position : position + length - 1] = encoding.ids
        stream[position + length - 1] = END_OF_TEXT_ID
        position += length
    return stream


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (byte-level BPE: one vocabulary character per byte)."""
    lengths = np.zeros(tokenizer.get_vocab_size(), dtype=np.int64)
    for token, token_id in tokenizer.get_vocab().items():
        lengths[token_id] = 0 if token == END_OF_TEXT else len(token)
    return lengths
