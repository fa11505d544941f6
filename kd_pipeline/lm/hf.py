"""Local Hugging Face causal-LM directories as teacher or student (optional extra: pip install -e '.[hf]').

`kd_pipeline.lm.hf:causal_lm` with kwargs {path: <folder with config.json + weights>} loads with
`local_files_only=True`: nothing is ever downloaded. The wrapper maps (B, T) ids -> (B, T, V) logits like
the built-in `transformer_lm`, so stages, losses and metrics do not know which one they hold.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError


class CausalLM(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=idx, use_cache=False).logits.float()


def causal_lm(num_classes: int, path: str, dtype: str = "float32") -> CausalLM:
    """num_classes (data.num_classes; sequence.teacher_outputs for a padded teacher head;
    sequence.student_tokenizer.num_classes for a student with its own tokenizer) must equal the model's output
    width: store ids are its logit columns."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ConfigError("teacher/student: a Hugging Face model needs transformers: pip install -e '.[hf]'") from None
    if not (Path(path) / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=getattr(torch, dtype))
    vocab = model.get_output_embeddings().weight.shape[0]
    if vocab != num_classes:
        raise ConfigError(f"{path}: model has {vocab} output logits, data.num_classes is {num_classes} (a teacher with a padded "
                          f"head: sequence.teacher_outputs: {vocab}; a student with its own tokenizer: sequence.student_tokenizer)")
    return CausalLM(model)
