"""The pipeline config: plain YAML data, validated once, every default declared once (here).

`load_config(path, sets)` returns a frozen `PipelineConfig` or raises `ConfigError` with one line:
`pipeline.yaml: cache.top_k: must be between 1 and num_classes (10), got 0`. `--set key=value` overrides are
parsed as YAML scalars/lists and go through exactly the same validation; their errors name the `--set`.

A pipeline without a `teacher` section is a consumer of the store at `cache.path` (kd_pipeline/consumer.py):
what the store's manifest declares (kind, num_classes, top_k, temperatures, features, …) is read from it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Optional, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

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

    num_classes: Optional[int] = Field(None, ge=2)  # required with a teacher; a consumer reads it from the store
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
    # steps between validation points in <out>/logs/<stage>.jsonl (0 = none): accuracy, cross-entropy and
    # perplexity of the model on the first evaluate.curve_rows rows of data.val_split (data.test_split when
    # there is none), rank 0 only; the report's validation curves
    eval_every: int = Field(0, ge=0)

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # eval_every at 0 is left out of dumps: the stamps and checkpoints made before the key existed stay valid
        d = handler(self)
        if isinstance(d, dict) and d.get("eval_every") == 0:
            d.pop("eval_every")
        return d


class ViewsConfig(Strict):
    """Augmentation-consistent cached views (FKD, Shen & Xing 2022): the teacher pass stores `count` augmented
    views of every training sample, one row each with the seed that replays it; the student replays the row's
    view, so input and target always belong together (docs/store-format.md "Views")."""

    count: int = Field(ge=1, le=4096)  # views (rows) per training sample; the evaluation split keeps 1, unaugmented
    # factory(**kwargs) -> a transform with `name`, `version` and __call__(x (n, ...), seeds (n,) int64) -> (n, ...),
    # a pure function of the seed (kd_pipeline/views.py)
    transform: Component = Component(factory="kd_pipeline.views:crop_flip", kwargs={"pad": 2})


class CacheConfig(Strict):
    # default <out>/cache; or an fsspec URL: s3://bucket/prefix, gs://…, http(s)://… (read-only: consumers only)
    path: Optional[str] = None
    # fsspec options for a URL path, for what the environment (AWS_* variables, profiles) cannot say, e.g.
    # {anon: true}. Never written anywhere: excluded from pipeline.json, stamps and checkpoints
    storage_options: dict[str, Any] = Field({}, exclude=True)
    top_k: Optional[int] = None  # 1..num_classes, checked against data.num_classes; required with a teacher
    temperatures: list[float] = [1.0]  # lse is stored for each; students may only use these
    # values are stored relative to each row's top logit (docs/store-format.md "Values"), as float16/float32,
    # or uint8 = 8-bit per-row quantisation of them
    values_dtype: Literal["float16", "float32", "uint8"] = "float16"
    # topk: the k largest logits + exact tail (lse). sampled: `draws` ids drawn per row from the teacher at
    # temperatures[0], stored once each with their counts (random-sampling KD; sequence stores only)
    targets: Literal["topk", "sampled"] = "topk"
    # how ids are stored: plain ints, or packed = ceil(log2 num_classes) bits each (lossless; 68 instead of 128
    # B/token at V = 128,256, k = 32). auto = packed for sequence stores (streaming 5-20% slower, still far
    # faster than a student trains: docs/benchmarks.md LM 4), plain for classification ones (a few bytes of a
    # row that features dominate)
    ids: Literal["auto", "plain", "packed"] = "auto"
    draws: int = Field(64, ge=1, le=65535)  # m, for targets: sampled; the stored width is min(m, vocab)
    features: dict[str, str] = {}  # stored name -> module path in the teacher (forward hook output)
    chunk_rows: int = Field(4096, ge=1)  # rows per chunk = rows per write block
    batch_size: int = Field(1024, ge=1)  # teacher forward batch
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # the teacher's weights and activations in the pass; top-k and logsumexp are always taken in float32
    teacher_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    views: Optional[ViewsConfig] = None  # None: one row per sample, the input as the dataset returns it

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


class RelationLoss(Strict):
    """RKD (Park et al. 2019) between the batch's cached teacher feature and a student module's output, both
    flattened; added to the response loss. Defaults: the weights RepDistiller (Tian et al., ICLR 2020) uses."""

    cached: str  # name under cache.features: the teacher's embedding
    student_module: str  # module path in the student whose output is its embedding
    w_dist: float = Field(25.0, ge=0)  # weight of the distance term RKD-D
    w_angle: float = Field(50.0, ge=0)  # weight of the angle term RKD-A (B^3 memory: keep batches small)


class TeacherStore(Strict):
    path: str  # a complete store of this pipeline's data (e.g. another pipeline's cache)
    weight: float = Field(1.0, gt=0)  # mixture weight; weights are normalised to sum 1


class DistillConfig(Strict):
    """How the student learns. Every mode uses alpha, temperature, feature and relation the same way
    (docs/distillation-types.md)."""

    # cached: from the store (never builds the teacher). online: the live teacher's full logits every step
    # (the reference the cache approximates; needs the teacher checkpoint). mutual: deep mutual learning of
    # two students (no teacher, no store)
    mode: Literal["cached", "online", "mutual"] = "cached"
    alpha: float = Field(0.3, ge=0, le=1)  # weight of CE on labelled rows; 1-alpha on tau^2 KL
    temperature: float = Field(4.0, gt=0)  # must be one of the store's temperatures
    feature: Optional[FeatureLoss] = None
    relation: Optional[RelationLoss] = None
    # multi-teacher: stores of the same data mixed (kd merge's tail rule) into <out>/ensemble at `temperature`,
    # which the student then reads instead of cache.path; mode cached only
    teachers: list[TeacherStore] = []
    # born-again networks: after generation 0 (the baseline student, hard labels), G generations of the same
    # model, each distilled from the previous one's store (<out>/generations/g<k>/); 0 = none
    generations: int = Field(0, ge=0)
    shuffle_window: int = Field(4, ge=1)  # blocks whose rows are shuffled together


class EvaluateConfig(Strict):
    latency_runs: int = Field(200, ge=1)  # batch-1 forward passes timed per model
    batch_size: int = Field(1024, ge=1)
    curve_rows: int = Field(2000, ge=1)  # rows (sequence: tokens) of each validation-curve point (*_train.eval_every)
    # store rows read for the report's histogram of the teacher's confidence (whole blocks, evenly spaced)
    confidence_rows: int = Field(1_000_000, ge=1)


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
    # torch intra-op threads for every stage (torch.set_num_threads when run_pipeline starts); 0 = leave
    # torch's setting (one per core, or OMP_NUM_THREADS). 1 because small models collapse with several
    # threads on a busy machine: 2000 student steps took 5-32 s with one thread and 27-515 s with torch's
    # default on a shared 2-core box (docs/benchmarks.md, section 5). Raise it for large models on a quiet one.
    threads: int = Field(1, ge=0)
    data: DataConfig
    teacher: Optional[Component] = None  # none: a consumer of the store at cache.path (kd_pipeline/consumer.py)
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
    def consumer(self) -> bool:
        """No teacher: the pipeline trains and evaluates from the store someone else made (cache.path)."""
        return self.teacher is None

    @property
    def cache_path(self):
        """The store: a pathlib.Path, or an FsPath for a URL (kd_pipeline/store/location.py)."""
        from .store.location import as_location

        return as_location(self.cache.path, self.cache.storage_options) if self.cache.path else self.out_dir / "cache"

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
    errors = e.errors()
    # a misspelled key gives two errors (`topk` unknown, `top_k` missing): the unknown one is the cause
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    path = ".".join(str(p) for p in err["loc"])
    kind = err["type"]
    if kind == "extra_forbidden":
        msg = "unknown key" + _valid_keys_hint(err["loc"])
    elif path.startswith("cache.storage_options"):
        msg = err["msg"]  # never echo what may be a secret
    elif kind == "missing":
        msg = "required key is missing"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f", got {err['input']!r}"
    return ConfigError(f"{_source(path, file, overrides)}: {path}: {msg}")


def _valid_keys_hint(loc: tuple) -> str:
    """ -> ' (did you mean cache.top_k?)', the nearest valid key of the unknown key's section (difflib), or
    the section's keys when none is near; '' where the section is not a config class (e.g. kwargs)."""
    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return ""
        model = next((t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type) and issubclass(t, BaseModel)), None)
        if model is None:
            return ""
    keys = list(model.model_fields)
    near = difflib.get_close_matches(str(loc[-1]), keys, n=1, cutoff=0.6)
    prefix = "".join(f"{p}." for p in loc[:-1])
    return f" (did you mean {prefix}{near[0]}?)" if near else f" ({prefix.rstrip('.') or 'the top level'} takes: {', '.join(keys)})"


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
    src = lambda p: _source(p, file, overrides)  # noqa: E731
    if cfg.consumer:
        from .consumer import resolve_consumer

        cfg = resolve_consumer(cfg, raw, src)
    from .config_checks import check, check_against_store  # they need the config classes above

    check(cfg, src)
    check_against_store(cfg, src)
    return cfg
