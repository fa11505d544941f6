"""Tokenizers (the built-in byte-level BPE or a local Hugging Face folder) and the token files the LM stages share.

A split is stored as flat arrays, nanoGPT-style, in one folder:
- `<split>.ids.npy` (N,) int32: token ids of all its documents back to back. A plain-text document starts with
  the tokenizer's separator (the built-in BPE's EOT; an HF tokenizer's BOS, else its EOS, else none), so every
  sample starts from a document boundary the model has seen; a conversation is its chat template's rendering;
- `<split>.offsets.npy` (D + 1,) int64: document starts;
- `<split>.chars.npy` (N,) int32: the character offset in its document's text where each token ends (a token
  spans the characters from the previous token's end to its own; the separator ends at 0): what aligns two
  tokenizers over the same text (kd_pipeline/uld.py);
- `<split>.loss.npy` (N,) uint8, only when the split holds conversations: 1 where the prediction made at that
  position (of the next token) carries loss, i.e. the next token is part of an assistant turn.
Files are written as the corpus streams in (documents are encoded in batches and appended), never holding
the split's texts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from ..errors import ConfigError, DataError

EOT = "<|endoftext|>"
ENCODE_BATCH = 256  # documents per tokenizer call


def train_bpe(texts: Iterable[str], vocab_size: int, path: Path) -> None:
    """Trains a byte-level BPE of `vocab_size` ids (id 0 = EOT) on `texts` (streamed) and saves it as JSON."""
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


@dataclass
class TextTokenizer:
    """What the LM track needs of a tokenizer: `backend` (a `tokenizers.Tokenizer`: fast, with character
    offsets), the separator id put before each plain-text document, the vocabulary size (ids are < it), and
    the Hugging Face tokenizer when there is one (its chat template renders conversations)."""

    backend: Any
    sep: int | None
    vocab_size: int
    hf: Any = None
    where: str = "tokenizer"


def load_tokenizer(path: str | Path, where: str) -> TextTokenizer:
    """A `tokenizer.json` file (the built-in BPE) or a local Hugging Face tokenizer folder, loaded offline
    (`local_files_only`: nothing is downloaded). where: the config key, for errors. Raises ConfigError."""
    p = Path(path)
    if p.is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(p))
        return TextTokenizer(tok, tok.token_to_id(EOT), tok.get_vocab_size(with_added_tokens=True), None, where)
    if not (p / "tokenizer.json").is_file():
        raise ConfigError(f"{where}: {p}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise ConfigError(f"{where}: a Hugging Face tokenizer needs transformers: pip install -e '.[hf]'") from None
    try:
        hf = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as e:
        raise ConfigError(f"{where}: {p}: cannot load the tokenizer ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not getattr(hf, "is_fast", False):
        raise ConfigError(f"{where}: {p}: a fast tokenizer (tokenizer.json) is needed for character offsets")
    sep = hf.bos_token_id if hf.bos_token_id is not None else hf.eos_token_id
    return TextTokenizer(hf.backend_tokenizer, sep, len(hf), hf, where)


# ----------------------------------------------------------------------------------------------- encoding


def _chat(tok: TextTokenizer, messages: list, doc: int) -> tuple[str, list[tuple[int, int]]]:
    """A conversation -> (its chat-template text, the character ranges of the assistant turns).

    A turn's range is what the model produces: from the end of the rendering of the turns before it with the
    generation prompt (`add_generation_prompt=True`) to the end of the rendering that includes it, so the
    role header is context and the template's end-of-turn marker is trained. Templates whose rendering of a
    longer conversation does not extend the shorter one are refused (the ranges would be guesses)."""
    where = f"data: conversation {doc}"
    if tok.hf is None or not getattr(tok.hf, "chat_template", None):
        raise DataError(f"{where}: conversations need a Hugging Face tokenizer with a chat template (sequence.tokenizer)")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: message {i}: expected {{role: str, content: str}}, got {str(m)[:60]!r}")

    def render(msgs, prompt=False) -> str:
        return tok.hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt) if msgs else ""

    text = render(messages)
    ranges = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not upto.startswith(before) or not text.startswith(upto):
            raise DataError(f"{where}: message {i}: the chat template's rendering is not prefix-consistent; cannot find the assistant's tokens")
        ranges.append((len(before), len(upto)))
    return text, ranges


def encode_docs(tok: TextTokenizer, items: Iterable, vocab: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Documents (str) or conversations (list of {role, content}) -> per document: ids (n,) int32, token end
    offsets (n,) int32 (characters of its text), loss (n,) uint8 for a conversation else None (see module doc).
    Raises DataError for an item of another type or an id >= vocab (data.num_classes)."""
    batch: list = []
    doc = 0
    for item in items:
        batch.append(item)
        if len(batch) == ENCODE_BATCH:
            yield from _encode_batch(tok, batch, doc, vocab)
            doc += len(batch)
            batch = []
    if batch:
        yield from _encode_batch(tok, batch, doc, vocab)


def _encode_batch(tok: TextTokenizer, items: list, doc0: int, vocab: int):
    texts, ranges = [], []
    for j, item in enumerate(items):
        if isinstance(item, str):
            texts.append(item)
            ranges.append(None)
        elif isinstance(item, (list, tuple)):
            t, r = _chat(tok, list(item), doc0 + j)
            texts.append(t)
            ranges.append(r)
        else:
            raise DataError(f"data: document {doc0 + j}: expected a text (str) or a conversation (list of messages), got {type(item).__name__}")
    for j, (enc, r) in enumerate(zip(tok.backend.encode_batch(texts, add_special_tokens=False), ranges)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        offs = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        if r is None and tok.sep is not None:  # plain text: the separator first (conversations carry their own)
            ids, offs = np.concatenate([[tok.sep], ids]), np.concatenate([np.zeros((1, 2), np.int64), offs])
        if len(ids) and (ids.max() >= vocab):
            raise DataError(f"data: document {doc0 + j}: token id {int(ids.max())} >= data.num_classes ({vocab}); {tok.where} has {tok.vocab_size} ids")
        loss = None
        if r is not None:
            asst = np.zeros(len(ids), bool)
            for a, b in r:
                asst |= (offs[:, 0] >= a) & (offs[:, 0] < b)
            loss = np.zeros(len(ids), np.uint8)
            loss[:-1] = asst[1:]  # the prediction at t is of token t + 1
        ends = np.maximum.accumulate(offs[:, 1]) if len(offs) else offs[:, 1]  # special tokens inside a text end at 0
        yield ids.astype(np.int32), ends.astype(np.int32), loss


class _Appender:
    """A 1-D .npy file written in pieces: raw bytes to a temp file, then header + bytes (no full copy in memory)."""

    def __init__(self, path: Path, dtype):
        self.path, self.dtype, self.n = path, np.dtype(dtype), 0
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.raw")
        self.f = open(self.tmp, "wb")

    def append(self, a: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(a, dtype=self.dtype).tobytes())
        self.n += len(a)

    def close(self, keep: bool = True) -> None:
        self.f.close()
        if keep:
            with open(self.path, "wb") as out, open(self.tmp, "rb") as raw:
                np.lib.format.write_array_header_1_0(out, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (self.n,)})
                while chunk := raw.read(1 << 22):
                    out.write(chunk)
        self.tmp.unlink()


def write_split(folder: Path, split: str, docs: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> int:
    """Writes a split's token files from encode_docs' output (streamed); -> number of documents. Documents
    with no token are skipped. The loss file is written only if some document is a conversation (plain-text
    documents then get 1 everywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, chars, loss = (_Appender(folder / f"{split}.{s}.npy", d) for s, d in (("ids", np.int32), ("chars", np.int32), ("loss", np.uint8)))
    offsets, any_chat, done = [0], False, False
    try:
        for i, e, m in docs:
            if not len(i):
                continue
            ids.append(i)
            chars.append(e)
            loss.append(np.ones(len(i), np.uint8) if m is None else m)
            any_chat |= m is not None
            offsets.append(offsets[-1] + len(i))
        done = True
    finally:  # a failed pass leaves no half-written file behind, only the raw temp files are removed
        ids.close(keep=done)
        chars.close(keep=done)
        loss.close(keep=done and any_chat)
    if not any_chat:  # a loss file of earlier data must not linger
        (folder / f"{split}.loss.npy").unlink(missing_ok=True)
    np.save(folder / f"{split}.offsets.npy", np.asarray(offsets, np.int64))
    return len(offsets) - 1


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


def _optional(folder: Path, split: str, name: str, n: int, dtype) -> np.ndarray | None:
    p = folder / f"{split}.{name}.npy"
    if not p.is_file():
        return None
    a = np.load(p, allow_pickle=False, mmap_mode="r")
    if a.shape != (n,) or a.dtype != np.dtype(dtype):
        raise DataError(f"{p}: expected ({n},) {np.dtype(dtype)}, got {a.shape} {a.dtype}")
    return a


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
    """A map-style dataset of a tokenized split: item i is sample i as a dict: `ids` (L,) int32 (L <= context),
    and when the split has them, `chars` (L,) int32 token end offsets relative to the sample's first character
    (the end of the token before it in its document, or the document start), and `loss` (L,) uint8.
    `lengths` (S,) are the samples' lengths (the store's rows per sample). Arrays are memory-mapped, not loaded."""

    def __init__(self, folder: Path, split: str, context: int, vocab_size: int):
        self.ids, self.offsets = load_split(folder, split, vocab_size, mmap=True)
        self.starts, self.lengths = windows(self.offsets, context)
        self.chars = _optional(folder, split, "chars", len(self.ids), np.int32)
        self.loss = _optional(folder, split, "loss", len(self.ids), np.uint8)
        self.doc = np.searchsorted(self.offsets, self.starts, side="right") - 1  # (S,) each sample's document

    def __len__(self) -> int:
        return len(self.starts)

    def char_start(self, i: int) -> int:
        """The character (in its document) where sample i's text starts."""
        a = int(self.starts[i])
        return 0 if a == int(self.offsets[self.doc[i]]) else int(self.chars[a - 1])

    def __getitem__(self, i: int) -> dict:
        a, n = int(self.starts[i]), int(self.lengths[i])
        item = {"ids": np.asarray(self.ids[a : a + n])}
        if self.chars is not None:
            item["chars"] = np.asarray(self.chars[a : a + n]) - self.char_start(i)
        if self.loss is not None:
            item["loss"] = np.asarray(self.loss[a : a + n])
        return item


class AlignedWindows:
    """The student's tokens of each teacher sample's text, for cross-tokenizer distillation: item i holds the
    tokens of `student`'s split (same documents, another tokenizer) that lie inside teacher sample i's
    character range, i.e. those starting at or after its first character and ending at or before its last
    (a token straddling either edge is left out), cut to `context` tokens; `chars` relative to the same first
    character as the teacher sample's, so equal offsets mean the same text."""

    def __init__(self, teacher: TokenWindows, folder: Path, split: str, context: int, vocab_size: int):
        self.teacher, self.context = teacher, context
        self.ids, self.offsets = load_split(folder, split, vocab_size, mmap=True)
        self.chars = _optional(folder, split, "chars", len(self.ids), np.int32)
        self.loss = _optional(folder, split, "loss", len(self.ids), np.uint8)
        if self.chars is None or teacher.chars is None or len(self.offsets) != len(teacher.offsets):
            raise DataError(f"{folder / split}: student token files do not match the teacher's documents; rerun prepare_data")
        self.lengths = teacher.lengths  # rows of the teacher sample (the store's), not the student's tokens

    def __len__(self) -> int:
        return len(self.teacher)

    def __getitem__(self, i: int) -> dict:
        t = self.teacher
        d, c0 = int(t.doc[i]), t.char_start(i)
        a = int(t.starts[i])
        c1 = int(t.chars[a + int(t.lengths[i]) - 1])
        lo, hi = int(self.offsets[d]), int(self.offsets[d + 1])
        ends = np.asarray(self.chars[lo:hi])
        prev = np.concatenate([[0], ends[:-1]])  # where each student token starts
        j0 = int(np.searchsorted(prev, c0, side="left"))
        j1 = min(int(np.searchsorted(ends, c1, side="right")), j0 + self.context)
        j1 = max(j1, min(j0 + 1, len(ends)))  # never empty: a sample has at least one token
        item = {"ids": np.asarray(self.ids[lo + j0 : lo + j1]), "chars": ends[j0:j1] - c0}
        if self.loss is not None:
            item["loss"] = np.asarray(self.loss[lo + j0 : lo + j1])
        return item
