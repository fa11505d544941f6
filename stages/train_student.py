"""Stage 4: train the student from the store -> <out>/student.safetensors.

Never builds or loads the teacher: k, temperatures and num_classes come from the store's manifest, targets
from its arrays, streamed in shuffled whole blocks. Inputs come from the dataset by sample id
(classification) or from the store itself (sequence: no corpus, no tokenizer needed). A student with its own tokenizer
(sequence.student_tokenizer) takes its tokens of each stored sample from the data and learns through the ULD
loss (kd_pipeline/uld.py), aligned with the store's rows by character offsets.
"""

from kd_pipeline.checkpoint import save_model
from kd_pipeline.config import PipelineConfig
from kd_pipeline.distill import check_store_for, check_uld_store
from kd_pipeline.distributed import device_for
from kd_pipeline.kinds import kind_for
from kd_pipeline.models import build_model, check_output
from kd_pipeline.objectives import CachedKD
from kd_pipeline.prepare import SUMMARY, data_dir, load_summary, open_samples, student_vocab
from kd_pipeline.runner import path_digest
from kd_pipeline.store import open_store
from kd_pipeline.stream import student_batches
from kd_pipeline.training import fit, per_rank, seed_everything, stage_checkpoint
from kd_pipeline.uld import CrossTokenizerKD

NAME = "train_student"
PARAMS = ("seed", "kind", "student", "student_train", "distill")  # the data: through the summary (deps)
EVERY_RANK = True  # DistributedDataParallel under torchrun


def deps(cfg: PipelineConfig):
    return [cfg.cache_path] + ([data_dir(cfg) / SUMMARY] if cfg.kind == "classification" or cross_tokenizer(cfg) else [])


def cross_tokenizer(cfg: PipelineConfig) -> bool:
    """A student with its own tokenizer: ULD from the store, its inputs from the data's student tokens."""
    return cfg.kind == "sequence" and cfg.sequence.student_tokenizer is not None


def outs(cfg: PipelineConfig):
    return [cfg.out_dir / "student.safetensors"]


def run(cfg: PipelineConfig, dist) -> None:
    seed_everything(cfg.seed)
    store = open_store(cfg.cache_path)
    m = store.manifest
    cross = cross_tokenizer(cfg)
    kind = kind_for(m.kind, student_vocab(cfg))
    summary = load_summary(cfg) if not kind.inputs_in_store or cross else None
    check_store_for(store, cfg, summary, cfg.out_dir / "teacher.safetensors")
    if cross:
        check_uld_store(store)
        samples = open_samples(cfg, m.dataset.splits, side="aligned")
    else:
        samples = open_samples(cfg, m.dataset.splits) if not kind.inputs_in_store else None
    bs = per_rank(cfg.student_train.batch_size, dist, "student_train")

    def batches(skip: int):
        return student_batches(store, samples, bs, cfg.distill.shuffle_window, cfg.seed, dist, cfg.data.num_workers, skip)

    probe = next(batches(0))
    student = build_model(cfg.student, kind.num_classes, "student")
    check_output(student, probe, kind, kind.num_classes, "student")
    if cross:
        module = CrossTokenizerKD(student.train(), kind, cfg.distill)
    else:
        module = CachedKD(student.train(), kind, cfg.distill, m.features, probe)
    d = cfg.model_dump(mode="json")
    ckpt = stage_checkpoint(cfg, NAME, cfg.student_train, {"student": module}, {k: d[k] for k in PARAMS}, path_digest(store.path), dist.world,
                            *([d["sequence"]] if cross else []))  # a cross-tokenizer student's tokens come from there
    fit(module, batches, cfg.student_train, NAME, cfg.out_dir / "logs" / f"{NAME}.jsonl", ckpt, dist, device_for(dist, cfg.student_train.device))
    if dist.is_main:
        save_model(student.cpu(), outs(cfg)[0], {"factory": cfg.student.factory, "kwargs": cfg.student.kwargs, "store": str(store.path)})
    ckpt.remove(dist)
    store.close()
