"""The pipeline config: plain YAML data, validated once, every default declared once (here).

`load_config(path, sets)` returns a frozen `PipelineConfig` or raises `ConfigError` with one line:
`pipeline.yaml: cache.top_k: must be between 1 and num_classes (10), got 0`. `--set key=value` overrides are
parsed as YAML scalars/lists and go through exactly the same validation; their errors name the `--set`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .components import check_kwargs, resolve
from .errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(Strict):
    """`factory` is "module:function"; `kwargs` bind to its signature (checked at load)."""

    factory: str
    kwargs: dict[str, Any] = {}


class DataConfig(Component):
    """classification: factory(split=NAME, **kwargs) -> map-style Dataset of (input, label), label -1 or None =
    unlabelled. sequence: factory(split=NAME, **kwargs) -> the split's texts (kd_pipeline/lm/corpus.py)."""

    num_classes: int = Field(ge=2)
    train_split: str = "train"  # labelled: teacher, baseline, and the CE term of the student
    transfer_splits: list[str] = []  # unlabelled inputs only the teacher labels (KD term only)
    # evaluation only: never trained on. The teacher pass stores its targets after the training rows (marked
    # as such), so a store's receiver can evaluate against the teacher without it
    test_split: str = "test"
    val_split: Optional[str] = None  # held out: validation metrics (sequence: also the store's reconstruction KL)
    # DataLoader worker processes that fetch samples for the teacher pass, the training stages and evaluation
    # (0 = in the main process: fastest for small in-memory datasets on few cores)
    num_workers: int = Field(0, ge=0)


class TrainConfig(Strict):
    steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    log_every: int = Field(100, ge=1)  # steps between loss-curve points in <out>/logs/<stage>.jsonl
    checkpoint_every: int = Field(500, ge=0)  # steps between resumable checkpoints in <out>/.kd/ckpt/ (0 = none)
    device: str = "auto"  # "auto" = this process's GPU when there is one, else cpu


class CacheConfig(Strict):
    path: Optional[str] = None  # default <out>/cache
    top_k: int  # 1..num_classes, checked against data.num_classes
    temperatures: list[float] = [1.0]  # lse is stored for each; students may only use these
    # values are stored relative to each row's top logit (docs/store-format.md "Values"), as float16/float32,
    # or uint8 = 8-bit per-row quantisation of them
    values_dtype: Literal["float16", "float32", "uint8"] = "float16"
    # topk: the k largest logits + exact tail (lse). sampled: `draws` ids drawn per row from the teacher at
    # temperatures[0], stored once each with their counts (random-sampling KD; sequence stores only)
    targets: Literal["topk", "sampled"] = "topk"
    draws: int = Field(64, ge=1, le=65535)  # m, for targets: sampled; the stored width is min(m, vocab)
    features: dict[str, str] = {}  # stored name -> module path in the teacher (forward hook output)
    chunk_rows: int = Field(4096, ge=1)  # rows per chunk = rows per write block
    batch_size: int = Field(1024, ge=1)  # teacher forward batch
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # the teacher's weights and activations in the pass; top-k and logsumexp are always taken in float32
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("at least one temperature is needed")
        if any(t <= 0 for t in v):
            raise ValueError(f"temperatures must be > 0, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"temperatures must be distinct, got {v}")
        return v


class FeatureLoss(Strict):
    cached: str  # name under cache.features
    student_module: str  # module path in the student whose output is projected
    beta: float = Field(1.0, ge=0)


class DistillConfig(Strict):
    alpha: float = Field(0.3, ge=0, le=1)  # weight of CE on labelled rows; 1-alpha on tau^2 KL
    temperature: float = Field(4.0, gt=0)  # must be one of the store's temperatures
    feature: Optional[FeatureLoss] = None
    shuffle_window: int = Field(4, ge=1)  # blocks whose rows are shuffled together


class EvaluateConfig(Strict):
    latency_runs: int = Field(200, ge=1)  # batch-1 forward passes timed per model
    batch_size: int = Field(1024, ge=1)


class StudentTokenizer(Strict):
    """Cross-tokenizer distillation (README "Hugging Face"): the student has its own tokenizer and vocabulary
    and learns from the store through the ULD loss (kd_pipeline/uld.py), aligned by character offsets."""

    path: str  # local Hugging Face tokenizer folder (tokenizer.json), or a tokenizer.json file
    num_classes: int = Field(ge=2)  # the student's output width (>= its tokenizer's vocabulary)
    context: Optional[int] = Field(None, ge=2)  # student tokens per sample; None = sequence.context


class SequenceConfig(Strict):
    """Keys of the sequence (language-model) pipeline; data.num_classes is the vocabulary size there."""

    context: int = Field(128, ge=2)  # tokens per sample: the teacher's and the student's context
    recon_tokens: int = Field(8192, ge=0)  # val tokens whose full logits measure the store's reconstruction KL
    eval_tokens: int = Field(65536, ge=1)  # val and test tokens evaluated per model
    # None = train the built-in byte-level BPE (data.num_classes ids) on the train split; else a local Hugging
    # Face tokenizer folder (tokenizer.json; offline), whose ids must be < data.num_classes
    tokenizer: Optional[str] = None
    # the teacher's output width when its head is padded past the vocabulary (e.g. 152064 logits for a
    # 151936-id tokenizer): logits from data.num_classes on are cut before anything reads them; recorded in
    # the store's manifest (teacher.outputs). None = the teacher must have exactly data.num_classes outputs
    teacher_outputs: Optional[int] = None
    student_tokenizer: Optional[StudentTokenizer] = None  # None = the student shares the teacher's tokenizer


class PipelineConfig(Strict):
    out: str  # run folder (relative to the working directory)
    seed: int = 0
    # what a sample is: classification = one input, one store row; sequence = a window of token ids, one store
    # row per token (the LM track). The stages are the same; kind picks the parts in kd_pipeline/kinds.py
    kind: Literal["classification", "sequence"] = "classification"
    data: DataConfig
    teacher: Component
    student: Component
    teacher_train: Optional[TrainConfig] = None  # required, except for a sequence teacher used as loaded
    student_train: TrainConfig
    cache: CacheConfig
    distill: DistillConfig = DistillConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    sequence: SequenceConfig = SequenceConfig()

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache.path) if self.cache.path else self.out_dir / "cache"

    @property
    def cached_splits(self) -> list[str]:
        """The splits whose rows the student trains on, in the order the store interleaves them."""
        return [self.data.train_split, *self.data.transfer_splits]

    @property
    def data_splits(self) -> list[str]:
        """Every split the pipeline reads: cached, validation, test."""
        return [*self.cached_splits, *([self.data.val_split] if self.data.val_split else []), self.data.test_split]


# ----------------------------------------------------------------------------------------------- loading


def _set_dotted(raw: dict, dotted: str, value: Any, src: str) -> None:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"{src}: {p} is not a mapping")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _source(path: str, file: str, overrides: dict[str, str]) -> str:
    for key, raw in overrides.items():
        if path == key or path.startswith(key + ".") or key.startswith(path + "."):
            return f"--set {key}={raw}"
    return file


def _pydantic_error(e: ValidationError, file: str, overrides: dict[str, str]) -> ConfigError:
    err = e.errors()[0]
    path = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key"
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f", got {err['input']!r}"
    return ConfigError(f"{_source(path, file, overrides)}: {path}: {msg}")


def load_config(path: str | Path, sets: list[str] = ()) -> PipelineConfig:
    path = Path(path)
    file = str(path)
    if not path.is_file():
        raise ConfigError(f"{file}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{file}: {where}invalid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping")
    if "pipeline" in raw:
        raise ConfigError(f"{file}: pipeline: renamed to `kind` (classification | sequence) in kd-pipeline 0.2")
    overrides: dict[str, str] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        key, val = item.split("=", 1)
        try:
            value = yaml.safe_load(val)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: value is not valid YAML") from e
        _set_dotted(raw, key.strip(), value, f"--set {item}")
        overrides[key.strip()] = val
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise _pydantic_error(e, file, overrides) from None
    _check(cfg, lambda p: _source(p, file, overrides))
    return cfg


def _check(cfg: PipelineConfig, src) -> None:
    """Checks that span sections, and factories that must import and bind."""
    n = cfg.data.num_classes
    if cfg.kind == "classification":
        for p, bad in (("teacher_train", cfg.teacher_train is None), ("cache.targets", cfg.cache.targets != "topk")):
            if bad:
                raise ConfigError(f"{src(p)}: {p}: {'required' if p == 'teacher_train' else 'sequence stores only'} for kind: classification")
    elif cfg.sequence.recon_tokens and not cfg.data.val_split:
        p = "data.val_split"
        raise ConfigError(f"{src(p)}: {p}: required for kind: sequence (held-out tokens for the reconstruction KL), or set sequence.recon_tokens: 0")
    if cfg.sequence.teacher_outputs is not None and cfg.sequence.teacher_outputs <= n:
        p = "sequence.teacher_outputs"
        raise ConfigError(f"{src(p)}: {p}: must exceed data.num_classes ({n}) (a padded head), got {cfg.sequence.teacher_outputs}")
    if cfg.sequence.student_tokenizer is not None and cfg.cache.targets != "topk":
        p = "cache.targets"
        raise ConfigError(f"{src(p)}: {p}: cross-tokenizer distillation (sequence.student_tokenizer) needs topk targets (ULD compares sorted top-k)")
    if not 1 <= cfg.cache.top_k <= n:
        p = "cache.top_k"
        raise ConfigError(f"{src(p)}: {p}: must be between 1 and num_classes ({n}), got {cfg.cache.top_k}")
    splits = cfg.data_splits
    if len(set(splits)) != len(splits):
        raise ConfigError(f"{src('data')}: data: split names must be distinct, got {splits}")
    for name in cfg.cache.features:
        if not name.isidentifier():
            p = f"cache.features.{name}"
            raise ConfigError(f"{src(p)}: {p}: feature names must be identifiers (letters, digits, _)")
    feat = cfg.distill.feature
    if feat is not None and feat.cached not in cfg.cache.features:
        p = "distill.feature.cached"
        raise ConfigError(f"{src(p)}: {p}: {feat.cached!r} is not one of cache.features {list(cfg.cache.features)}")
    for key, comp, injected in (
        ("data", cfg.data, ("split",)),
        ("teacher", cfg.teacher, ("num_classes",)),
        ("student", cfg.student, ("num_classes",)),
    ):
        fn = resolve(comp.factory, f"{src(key + '.factory')}: {key}.factory")
        check_kwargs(fn, comp.kwargs, f"{src(key + '.kwargs')}: {key}", injected)
