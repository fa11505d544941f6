"""The sequence (language-model) parts: the built-in corpus, the tokenizer and token windows, decoder-only
models (built-in and Hugging Face), and the reconstruction KL of a sequence store. The stages are the same as
for classification (kd_pipeline/kinds.py holds what differs)."""
