"""The sequence (language-model) track: corpus, tokenizer, decoder-only models, per-token teacher targets,
the student's sample stream and the LM metrics. Stages `stages/lm_*.py` wire these pieces."""
