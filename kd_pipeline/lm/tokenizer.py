"""Byte-level BPE (Hugging Face `tokenizers`) and the token files the LM stages share.

A split is stored as two flat arrays, nanoGPT-style: `<split>.ids.npy` (N,) int32 token ids of all its
documents back to back, each document starting with the end-of-text id EOT (so every sample starts from a
document boundary the model has seen), and `<split>.offsets.npy` (D + 1,) int64 document starts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError

EOT = "<|endoftext|>"


def train_bpe(texts: list[str], vocab_size: int, path: Path) -> None:
    """Trains a byte-level BPE of `vocab_size` ids (id 0 = EOT) on `texts` and saves it as JSON at `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))


def encode_split(tokenizer_path: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> ids (N,) int32 with EOT before each document, offsets (D + 1,) int64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    eot = tok.token_to_id(EOT)
    docs = [np.asarray([eot, *e.ids], dtype=np.int32) for e in tok.encode_batch(texts)]
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    return np.concatenate(docs), offsets


def save_split(folder: Path, split: str, ids: np.ndarray, offsets: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{split}.ids.npy", ids)
    np.save(folder / f"{split}.offsets.npy", offsets)


def load_split(folder: Path, split: str, vocab_size: int, mmap: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """-> ids (N,) int32 (memory-mapped if `mmap`), offsets (D + 1,) int64; checked against vocab_size."""
    try:
        ids = np.load(folder / f"{split}.ids.npy", allow_pickle=False, mmap_mode="r" if mmap else None)
        offsets = np.load(folder / f"{split}.offsets.npy", allow_pickle=False)
    except FileNotFoundError as e:
        raise DataError(f"{e.filename}: missing; run the prepare_data stage first") from None
    if ids.dtype != np.int32 or ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= vocab_size)):
        raise DataError(f"{folder / split}.ids.npy: expected (N,) int32 ids in [0, {vocab_size})")
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(ids) or (np.diff(offsets) < 1).any():
        raise DataError(f"{folder / split}.offsets.npy: not increasing document starts ending at {len(ids)}")
    return ids, offsets


def windows(offsets: np.ndarray, context: int, min_len: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Cuts each document into consecutive samples of `context` tokens (its last one shorter; samples of
    fewer than `min_len` tokens are dropped). -> starts (S,) int64, lengths (S,) int64."""
    starts, lengths = [], []
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        s = np.arange(a, b, context, dtype=np.int64)
        n = np.minimum(s + context, b) - s
        keep = n >= min_len
        starts.append(s[keep])
        lengths.append(n[keep])
    if not starts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(starts), np.concatenate(lengths)


class TokenWindows:
    """A map-style dataset of a tokenized split: item i is sample i's token ids (L,) int32, L <= context.
    `lengths` (S,) are the samples' lengths (the store's rows per sample). Ids are memory-mapped, not loaded."""

    def __init__(self, folder: Path, split: str, context: int, vocab_size: int):
        self.ids, offsets = load_split(folder, split, vocab_size, mmap=True)
        self.starts, self.lengths = windows(offsets, context)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> np.ndarray:
        a = int(self.starts[i])
        return np.asarray(self.ids[a : a + int(self.lengths[i])])
