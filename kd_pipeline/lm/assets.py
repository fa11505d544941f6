"""Offline Hugging Face assets for the examples and tests, made from the stdlib corpus (nothing is downloaded).

`python -m kd_pipeline.lm.assets OUT` writes into OUT:
- `tokenizer/`, `tokenizer-small/`: byte-level BPE tokenizers of two vocabulary sizes trained on the same
  train texts, saved with `transformers.PreTrainedTokenizerFast.save_pretrained` (tokenizer.json +
  tokenizer_config.json), with a ChatML chat template and `<|endoftext|>` as EOS;
- `text/<split>.jsonl`: the stdlib corpus's documents as JSON lines `{"text": ...}` (more text than the
  tokenizers were trained on: a teacher trained on it sees each token about once in the example);
- `chat/<split>.jsonl`: conversations `{"messages": [{role, content}, ...]}` made from stdlib functions with a
  docstring: a system line, the user asks for the function by module, name and docstring summary, the
  assistant answers with its source (real text; the answer is what a student learns to write);
- `teacher/`, `student/`: randomly initialised tiny causal LMs (`save_pretrained`), a Llama with a padded
  head (vocabulary rounded up to a multiple of 64, as Qwen's 152,064 outputs for 151,936 ids) and a GPT-2.
Sizes are arguments of each function; the defaults fit a few CPU minutes.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

from .corpus import split_of, stdlib_corpus, stdlib_files

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tokenizer(texts: list[str], vocab_size: int, out: Path) -> int:
    """Trains a byte-level BPE (ids 0..2 = SPECIALS) on `texts` and saves it as a Hugging Face tokenizer folder
    with the ChatML template. -> its vocabulary size (<= vocab_size on a small corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=SPECIALS[0], pad_token=SPECIALS[0],
                                 additional_special_tokens=SPECIALS[1:])
    hf.chat_template = CHATML
    hf.save_pretrained(str(out))
    return len(hf)


def write_jsonl(rows, path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def conversations(split: str, max_chars: int = 1500, limit: int | None = None):
    """Chat samples from the stdlib functions of `split`'s files (corpus.split_of): one per function with a
    docstring whose source is at most max_chars characters."""
    n = 0
    for rel, path in stdlib_files():
        if split_of(rel, 0.05, 0.05) != split:
            continue
        src = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            doc = ast.get_docstring(node) if isinstance(node, ast.FunctionDef) else None
            code = ast.get_source_segment(src, node) if doc else None
            if not code or len(code) > max_chars:
                continue
            module = rel.removesuffix(".py").replace("/", ".")
            yield {"messages": [
                {"role": "system", "content": "You write Python standard-library code."},
                {"role": "user", "content": f"Write `{node.name}` from `{module}`: {doc.splitlines()[0]}"},
                {"role": "assistant", "content": code},
            ]}
            n += 1
            if limit is not None and n >= limit:
                return


def save_causal_lm(out: Path, vocab_size: int, arch: str = "llama", layers: int = 1, dim: int = 32, heads: int = 2,
                   context: int = 64, seed: int = 0) -> None:
    """A randomly initialised tiny causal LM (`llama` or `gpt2`) with `vocab_size` outputs, saved offline."""
    import torch
    import transformers

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=dim, intermediate_size=2 * dim, num_hidden_layers=layers,
                                       num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=context,
                                       tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=dim, n_layer=layers, n_head=heads,
                                      bos_token_id=0, eos_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    model.save_pretrained(str(out))


def make_assets(out: Path, vocab: int = 2048, small_vocab: int = 1024, max_bytes: int = 300_000, text_bytes: int = 1_500_000,
                chats: int = 400, context: int = 128, teacher_size: tuple[int, int] = (2, 128), student_size: tuple[int, int] = (1, 64)) -> dict:
    """Writes every asset of the module doc into `out`; -> {name: size} (also written to out/assets.json).
    max_bytes: train text the tokenizers learn from (stdlib_corpus's first files); text_bytes: the train
    split of text/ (val and test: a fifth of it each); teacher_size, student_size: (layers, width)."""
    out = Path(out)
    train = stdlib_corpus("train", max_bytes=max_bytes)
    info = {"vocab": save_tokenizer(train, vocab, out / "tokenizer"), "small_vocab": save_tokenizer(train, small_vocab, out / "tokenizer-small")}
    for s in ("train", "val", "test"):
        texts = stdlib_corpus(s, max_bytes=text_bytes if s == "train" else text_bytes // 5)
        write_jsonl(({"text": x} for x in texts), out / "text" / f"{s}.jsonl")
        info[f"chat_{s}"] = write_jsonl(conversations(s, limit=chats if s == "train" else chats // 5), out / "chat" / f"{s}.jsonl")
    padded = (info["vocab"] // 64 + 1) * 64  # always past the vocabulary: the padded-head case
    info["teacher_outputs"] = padded
    save_causal_lm(out / "teacher", padded, "llama", layers=teacher_size[0], dim=teacher_size[1], heads=4, context=context)
    save_causal_lm(out / "student", info["vocab"], "gpt2", layers=student_size[0], dim=student_size[1], heads=2, context=context)
    (out / "assets.json").write_text(json.dumps(info, indent=1))
    return info


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m kd_pipeline.lm.assets OUT_FOLDER")
    print(json.dumps(make_assets(Path(sys.argv[1])), indent=1))
