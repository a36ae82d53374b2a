"""Byte-level BPE vocabulary and tokenisation into flat token-id arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tasks.errors import InputError

END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 0  # the first special token; also the model's eos and pad id


def train_tokenizer(train_texts: list[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on the training split only."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
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
