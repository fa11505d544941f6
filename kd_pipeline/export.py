"""`kd export RUN --format onnx`: a run's trained model -> <RUN>/export/<model>.onnx, checked before it is kept.

Cloud -> embedded devices: the student leaves the pipeline as one self-contained ONNX file that onnxruntime
runs without torch. The path is torch.onnx.export's torch.export-based exporter ("dynamo", the default since
torch 2.9; the TorchScript one warns it will be removed) at an explicit opset, a dynamic batch axis (and
token axis for an LM), then onnx.checker, then onnxruntime (CPUExecutionProvider) against torch on the
run's whole test split (an LM: its test windows up to sequence.eval_tokens). The file is kept only if
max |Δlogit| <= tolerance · max(1, max |logit|) and top-1 agreement >= min_agreement; otherwise no
<model>.onnx is left in <RUN>/export. The bound scales with the logits because fp32 rounding does: the
default run's logits reach |z| = 186 and differ by up to 6e-5 (3.3e-7 of the scale, a few ulp). Latency per sample: batch 1, median of N runs after 10 warm-up calls, one thread each.
`int8`: onnxruntime's dynamic quantisation (int8 weights, activations quantised per call); its accuracy,
agreement and latency are reported, not held to the fp32 tolerance (changing the logits is what it does).

Needs the `onnx` extra (`pip install -e '.[onnx]'`: onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import nn

from .checkpoint import load_model
from .config import PipelineConfig, _pydantic_error
from .errors import ConfigError, KDError
from .evaluation import median_call_ms
from .models import build_model

OPSET = 18  # torch 2.13's torchlib opset (no version-conversion pass); onnxruntime >= 1.14 runs it
TOLERANCE = 1e-5  # max |Δlogit| / max(1, max |logit|), fp32 onnxruntime vs torch; the default run: <= 3.8e-7
MIN_AGREEMENT = 1.0  # top-1 agreement onnxruntime vs torch on the test split
MODELS = {"student": "student", "baseline": "student", "teacher": "teacher"}  # checkpoint -> config component


@dataclass
class TestSet:
    x: torch.Tensor  # (N, ...) inputs, or (N, T) int64 token windows (0-padded)
    y: torch.Tensor  # (N,) labels, or (N, T) next-token ids; -1 = no label
    mask: torch.Tensor | None  # (N, T) real positions of each window; None: every row counts
    axes: dict[int, str]  # input axes left dynamic in the ONNX graph; the logits share them


def load_run_config(run: Path) -> PipelineConfig:
    """The config `kd run` resolved for this run folder (<run>/.kd/pipeline.json). Raises ConfigError."""
    p = run / ".kd" / "pipeline.json"
    if not p.is_file():
        raise ConfigError(f"{p}: missing; run `kd run` first (it records the resolved config there)")
    try:
        return PipelineConfig.model_validate(json.loads(p.read_text()))
    except ValueError as e:
        if isinstance(e, ValidationError):
            raise _pydantic_error(e, str(p), {}) from None
        raise ConfigError(f"{p}: not JSON ({e})") from None


def load_trained(run: Path, cfg: PipelineConfig, name: str) -> nn.Module:
    """<run>/<name>.safetensors built from the config's component, in eval mode. Refuses (KDError) a
    checkpoint whose recorded factory/kwargs differ from the config's: pipeline.json is rewritten by every
    `kd run`, the checkpoint only when its stage runs, and a checkpoint's metadata is never imported."""
    from safetensors import safe_open

    ckpt = run / f"{name}.safetensors"
    component = getattr(cfg, MODELS[name])
    if component is None:  # a consumer run: it trained from a received store; the teacher stayed with its producer
        raise KDError(f"{run}: no {name} in this run folder: its pipeline has no {name} section (it trained from a received store); "
                      f"export the student or the baseline")
    if not ckpt.is_file():
        raise KDError(f"{ckpt}: no {name} checkpoint; run `kd run` first")
    want = json.loads(json.dumps({"factory": component.factory, "kwargs": component.kwargs}))
    try:
        with safe_open(str(ckpt), "pt") as f:
            meta = f.metadata() or {}
        got = {k: json.loads(meta[k]) for k in ("factory", "kwargs") if k in meta}
    except Exception as e:
        raise KDError(f"{ckpt}: unreadable safetensors header ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if got != want:
        raise KDError(f"{ckpt}: trained as {got}, but {run}/.kd/pipeline.json has {MODELS[name]}: {want}; rerun `kd run`")
    return load_model(build_model(component, cfg.data.num_classes, MODELS[name]), ckpt, name).eval().requires_grad_(False)


def test_set(cfg: PipelineConfig, run: Path) -> TestSet:
    """The test split as the pipeline reads it (kd_pipeline/prepare.py), in one batch: every sample
    (classification), or windows up to sequence.eval_tokens tokens (an LM: its tokens in <run>/data)."""
    import numpy as np

    from .prepare import open_samples

    samples = open_samples(cfg.model_copy(update={"out": str(run)}), [cfg.data.test_split])
    ds = samples.datasets[0]
    n = len(ds) if cfg.kind == "classification" else max(1, int(np.searchsorted(np.cumsum(ds.lengths), cfg.sequence.eval_tokens, side="right")))
    b = samples.__getitems__((np.zeros(n, np.int64), np.arange(n, dtype=np.int64)))
    if cfg.kind == "classification":
        return TestSet(b["x"], b["y"], None, {0: "batch"})
    return TestSet(b["x"], b["y"], b["mask"], {0: "batch", 1: "tokens"})


def export_onnx(model: nn.Module, example: torch.Tensor, axes: dict[int, str], path: Path) -> None:
    """torch.onnx.export (torch.export-based, opset OPSET) -> one self-contained file at `path`, checked by
    onnx.checker. example: (B >= 2, ...) input; a size-1 axis would be specialised by torch.export."""
    import onnx

    dyn = {"input": axes, "logits": axes}
    try:
        with warnings.catch_warnings(), _quiet("torch.onnx", "torch.export", "onnxscript"):
            warnings.simplefilter("ignore")  # deprecation chatter of the exporter's own dependencies
            program = torch.onnx.export(model, (example,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                        output_names=["logits"], dynamic_axes=dyn, verbose=False)
        program.save(str(path), external_data=False)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        path.unlink(missing_ok=True)
        raise KDError(f"{type(model).__name__}: ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e


class _quiet:
    """Raises the named loggers to ERROR inside the block (the exporter logs missing torchvision ops)."""

    def __init__(self, *names: str):
        self.loggers = [logging.getLogger(n) for n in names]

    def __enter__(self):
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        for lg, lvl in zip(self.loggers, self.levels):
            lg.setLevel(lvl)


def session(path: Path):
    """onnxruntime on CPU with one intra- and one inter-op thread (the latency comparison's setting)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare(model: nn.Module, sess, ts: TestSet, batch_size: int) -> dict:
    """torch vs onnxruntime over the whole test set in batches of `batch_size` rows. -> max_abs_logit_diff
    (NaN if either side is not finite), max_abs_logit (torch's, the scale), relative_logit_diff (the first over
    max(1, the second)), top1_agreement over rows (an LM: over real token positions), accuracy of each over
    labelled rows/positions."""
    diffs, scale, agree, hit_t, hit_o, n, n_lab = [], 0.0, 0, 0, 0, 0, 0
    for i in range(0, len(ts.x), batch_size):
        xb, yb = ts.x[i : i + batch_size], ts.y[i : i + batch_size]
        zt = model(xb).float()
        zo = torch.from_numpy(sess.run(None, {"input": xb.numpy()})[0]).float()
        if ts.mask is not None:  # (B, T, V) -> (P, V) over real positions
            m = ts.mask[i : i + batch_size]
            zt, zo, yb = zt[m], zo[m], yb[m]
        d = (zt - zo).abs().max()
        diffs.append(float(d) if torch.isfinite(zo).all() and torch.isfinite(zt).all() else float("nan"))
        scale = max(scale, float(zt.abs().max()))
        pt, po, lab = zt.argmax(-1), zo.argmax(-1), yb >= 0
        agree += int((pt == po).sum())
        hit_t += int((pt == yb)[lab].sum())
        hit_o += int((po == yb)[lab].sum())
        n, n_lab = n + len(yb), n_lab + int(lab.sum())
    d = float(np.max(diffs))
    return {"max_abs_logit_diff": d, "max_abs_logit": scale, "relative_logit_diff": d / max(1.0, scale),
            "top1_agreement": agree / n, "accuracy": hit_o / max(n_lab, 1), "torch_accuracy": hit_t / max(n_lab, 1),
            "compared": n, "labelled": n_lab}


def latencies_ms(model: nn.Module, sessions: dict, ts: TestSet, runs: int) -> dict[str, float]:
    """Median batch-1 latency (ms per sample; an LM: per window) of torch and each session, one thread each."""
    xs = [ts.x[i % len(ts.x)][None] for i in range(runs + 10)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            out = {"torch": median_call_ms(model, xs)}
    finally:
        torch.set_num_threads(threads)
    arrays = [x.numpy() for x in xs]
    for name, s in sessions.items():
        out[name] = median_call_ms(lambda a, s=s: s.run(None, {"input": a}), arrays)
    return out


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime.quantization.quantize_dynamic (int8 weights, activation scales computed per call), after
    its recommended pre-processing (shape inference and graph optimisation) into a temporary file."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(dst.name + ".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre))
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8)
    finally:
        pre.unlink(missing_ok=True)


def require_onnx() -> None:
    """Raises KDError naming the extra when onnx, onnxruntime or onnxscript (the exporter's) is missing."""
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise KDError(f"kd export needs {', '.join(missing)}: pip install -e '.[onnx]'")


def export_run(run: Path, name: str = "student", int8: bool = False, tolerance: float | None = None,
               min_agreement: float | None = None, latency_runs: int | None = None) -> dict:
    """Exports <run>/<name>.safetensors to <run>/export/<name>.onnx (+ <name>.int8.onnx) and writes the
    figures to <run>/export/<name>.json; returns them. latency_runs defaults to evaluate.latency_runs.
    Raises KDError (and leaves no <name>.* in <run>/export) when onnxruntime differs from torch beyond
    `tolerance` (max |Δlogit| / max(1, max |logit|), default TOLERANCE) or `min_agreement` (top-1, default MIN_AGREEMENT), or when
    the run folder lacks what it needs."""
    require_onnx()
    tolerance = TOLERANCE if tolerance is None else tolerance
    min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
    if name not in MODELS:
        raise KDError(f"--model {name}: expected one of {', '.join(MODELS)}")
    cfg = load_run_config(run)
    model = load_trained(run, cfg, name)
    ts = test_set(cfg, run)
    bs = cfg.evaluate.batch_size if ts.mask is None else max(1, cfg.evaluate.batch_size // cfg.sequence.context)
    out = run / "export"
    out.mkdir(parents=True, exist_ok=True)
    files = {"onnxruntime_fp32": out / f"{name}.onnx", "onnxruntime_int8": out / f"{name}.int8.onnx"}
    for f in [*files.values(), out / f"{name}.json"]:  # a refused export leaves nothing that looks checked
        f.unlink(missing_ok=True)
    tmp = {k: f.with_name(f".{f.name}.{os.getpid()}.tmp.onnx") for k, f in files.items()}
    try:
        export_onnx(model, ts.x[:2], ts.axes, tmp["onnxruntime_fp32"])
        sessions = {"onnxruntime_fp32": session(tmp["onnxruntime_fp32"])}
        figures = {"onnxruntime_fp32": compare(model, sessions["onnxruntime_fp32"], ts, bs)}
        r = figures["onnxruntime_fp32"]
        if not r["relative_logit_diff"] <= tolerance or r["top1_agreement"] < min_agreement:  # NaN fails too
            raise KDError(f"{files['onnxruntime_fp32']}: onnxruntime differs from torch on {cfg.data.test_split} "
                          f"({r['compared']} {'positions' if ts.mask is not None else 'samples'}): max |Δlogit| "
                          f"{r['max_abs_logit_diff']:.3g} over max(1, max |logit| {r['max_abs_logit']:.3g}) = "
                          f"{r['relative_logit_diff']:.3g} (tolerance {tolerance:g}), top-1 agreement "
                          f"{r['top1_agreement']:.6f} (minimum {min_agreement:g}); not written")
        if int8:
            quantize_int8(tmp["onnxruntime_fp32"], tmp["onnxruntime_int8"])
            sessions["onnxruntime_int8"] = session(tmp["onnxruntime_int8"])
            figures["onnxruntime_int8"] = compare(model, sessions["onnxruntime_int8"], ts, bs)
        lat = latencies_ms(model, sessions, ts, latency_runs or cfg.evaluate.latency_runs)
        for k in sessions:
            os.replace(tmp[k], files[k])
    finally:
        for f in tmp.values():
            f.unlink(missing_ok=True)
    report = _report(run, cfg, name, ts, figures, lat, files, tolerance, min_agreement)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    return report


def _report(run, cfg, name, ts, figures, lat, files, tolerance, min_agreement) -> dict:
    import onnx
    import onnxruntime

    fp32 = figures["onnxruntime_fp32"]
    rows = {"torch": {"accuracy": fp32["torch_accuracy"], "latency_ms_per_sample": lat["torch"],
                      "bytes": (run / f"{name}.safetensors").stat().st_size}}
    for k, r in figures.items():
        rows[k] = {**{f: r[f] for f in ("accuracy", "max_abs_logit_diff", "relative_logit_diff", "top1_agreement")},
                   "latency_ms_per_sample": lat[k], "bytes": files[k].stat().st_size, "file": str(files[k])}
    return {
        "run": str(run), "model": name, "format": "onnx", "kind": cfg.kind,
        "exporter": "torch.onnx.export(dynamo=True)", "opset": OPSET,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "test_split": cfg.data.test_split, "compared": fp32["compared"], "labelled": fp32["labelled"],
        "max_abs_logit": fp32["max_abs_logit"],
        "unit": "token positions" if ts.mask is not None else "samples",
        "check": {"tolerance_relative_logit_diff": tolerance, "min_top1_agreement": min_agreement,
                  "applies_to": "onnxruntime_fp32 (int8 is reported, not held to it)"},
        "latency": "batch 1, median, 1 thread each" + (", per window of up to sequence.context tokens" if ts.mask is not None else ""),
        "results": rows,
    }


def render(report: dict) -> None:
    """The figures as one table on stdout."""
    from .progress import make_console
    from rich.table import Column, Table

    c = make_console()
    chk = report["check"]
    c.print(f"[bold]{report['run']}[/bold]  {report['model']} -> ONNX opset {report['opset']} ({report['exporter']})")
    c.print(f"onnxruntime vs torch on {report['test_split']}: {report['compared']:,} {report['unit']}")
    t = Table("accuracy", "max |Δlogit|", "agreement", "ms/sample", "bytes")
    t.columns.insert(0, Column("runtime", no_wrap=True))
    for k, r in report["results"].items():
        d = r.get("max_abs_logit_diff")
        a = r.get("top1_agreement")
        t.add_row(k.replace("onnxruntime_", "onnxruntime "), f"{100 * r['accuracy']:.2f}%", "" if d is None else f"{d:.2e}", "" if a is None else f"{100 * a:.2f}%",
                  f"{r['latency_ms_per_sample']:.4f}", f"{r['bytes']:,}")
    c.print(t)
    c.print(f"check (fp32): max |Δlogit| <= {chk['tolerance_relative_logit_diff']:g} × max(1, max |logit| "
            f"{report['max_abs_logit']:.3g}), agreement >= {chk['min_top1_agreement']:g}; int8 is not held to it")
    c.print(f"latency: {report['latency']}")
    for r in report["results"].values():
        if "file" in r:
            c.print(f"wrote {r['file']}")
