"""The `kd` command line. Exit codes: 0 ok, 2 bad input (one line naming key/file/array), 1 unexpected."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from typer.core import TyperCommand

from .errors import KDError
from .store.location import display, redact

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help="Offline knowledge distillation through a teacher-logit cache.")
_state = {"debug": False}
# what a rerun finds (kd_pipeline/runner.py stamps, store block markers, resume.py checkpoints)
INTERRUPTED = "interrupted: finished stages, finished store blocks and the last training checkpoint are kept; run the same command again to resume"


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"kd {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors (also after a command)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


class _RunCommand(TyperCommand):
    """`kd run --help` ends with the stages, read from the runner's stage list when help is asked for
    (importing the stages loads torch: not for every `kd` call)."""

    def format_help(self, ctx, formatter) -> None:
        from .runner import load_stages

        names = ", ".join(s.NAME for s in load_stages())
        self.epilog = "\n\n".join(["Stages, in the order they run, for both kinds (classification, sequence; a pipeline "
                                    "without a teacher skips the teacher's); --stage NAME runs only the named ones:", names])
        super().format_help(ctx, formatter)


@contextmanager
def _errors():
    try:
        yield
    except KDError as e:
        if _state["debug"]:
            raise
        typer.echo("error: " + " ".join(redact(str(e)).split("\n")), err=True)  # one line, even for odd input; no secrets
        raise typer.Exit(2) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:
        if _state["debug"]:
            raise
        first = redact(str(e).splitlines()[0]) if str(e) else ""
        typer.echo(f"error: unexpected {type(e).__name__}: {first} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


@app.command(cls=_RunCommand)
def run(
    pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="Pipeline YAML."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Run only this stage (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Run stages even if up to date."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (YAML)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would run and why, the store's size and the teacher pass's time (= kd plan)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Run the pipeline; stages whose params and inputs are unchanged are skipped. Ends with a summary table."""
    _state["debug"] |= debug
    with _errors():
        from .config import load_config
        from .progress import interval
        from .runner import run_pipeline

        interval()  # a bad KD_PROGRESS_INTERVAL fails now, not at the first long step
        cfg = load_config(pipeline, set_ or [])
        if dry_run:
            return _plan(cfg, stage or [], 3, False)
        timings: list[dict] = []
        try:
            run_pipeline(cfg, stage or [], force, timings=timings)
            if timings:  # rank 0 (the only one that records them under torchrun)
                from .summary import print_summary

                print_summary(cfg, timings, typer.echo)
        except KeyboardInterrupt:
            typer.echo(INTERRUPTED, err=True)
            if _state["debug"]:
                raise
            raise typer.Exit(130) from None  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


def _plan(cfg, only: list[str], probe_batches: int, as_json: bool) -> None:
    from .plan import make_plan, render

    p = make_plan(cfg, only, probe_batches)
    if as_json:
        typer.echo(json.dumps(p, indent=2))
    else:
        for line in render(p):
            typer.echo(line)


@app.command()
def plan(
    pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="Pipeline YAML."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Plan only this stage (repeatable), as kd run --stage."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (YAML)."),
    probe_batches: int = typer.Option(3, "--probe-batches", min=0, help="Teacher batches timed to estimate the teacher pass (0 = none)."),
    as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Which stages would run and why, the store's size against free disk, the teacher pass's time (runs prepare_data if needed)."""
    _state["debug"] |= debug
    with _errors():
        from .config import load_config

        _plan(load_config(pipeline, set_ or []), stage or [], probe_batches, as_json)


@app.command()
def report(
    run: Path = typer.Argument(..., help="Run folder (the config's `out`, after `kd run`)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Write the run's report.md and report.png again from its metrics, logs, stamps and store."""
    _state["debug"] |= debug
    with _errors():
        from .report import report_run

        typer.echo(str(report_run(run)))


@app.command()
def sweep(
    pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="Pipeline YAML."),
    tau: str = typer.Option(..., "--tau", help="Temperatures, e.g. 1,2,4 (each one the store declares)."),
    alpha: str = typer.Option(..., "--alpha", help="Weights of CE on labels, e.g. 0.1,0.5,0.9."),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes training cells in parallel (one thread each)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (YAML)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """One KD student per (τ, α) from the pipeline's one store; resumable; a table and a heatmap in <out>/sweep/."""
    _state["debug"] |= debug
    with _errors():
        from .config import load_config
        from .sweep import parse_values, run_sweep

        taus = parse_values(tau, "--tau", lo=0.0)
        alphas = parse_values(alpha, "--alpha", lo=0.0, hi=1.0)
        try:
            s = run_sweep(load_config(pipeline, set_ or []), taus, alphas, jobs, log=typer.echo)
        except KeyboardInterrupt:
            typer.echo("interrupted: finished cells are kept; run the same command again to resume", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"table {s['md']}, heatmap {s['png']}")


@app.command()
def inspect(
    store: str = typer.Argument(..., help="Store folder, or URL: s3://bucket/prefix, gs://…, http(s)://…"),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest and sizes as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Describe a store: manifest, rows per split, bytes per row, completeness."""
    _state["debug"] |= debug
    with _errors():
        from .inspect import describe, render

        info = describe(store)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            render(info)


@app.command()
def verify(
    store: str = typer.Argument(..., help="Store folder, or URL: s3://bucket/prefix, gs://…, http(s)://…"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Read every block, recompute its checksum, check manifest vs arrays vs samples.parquet. Exit 2 on problems."""
    _state["debug"] |= debug
    with _errors():
        from .store.verify import as_json as report_json
        from .store.verify import verify_store

        r = verify_store(store)
        if as_json:
            typer.echo(report_json(r))
        else:
            for line in r.notes:
                typer.echo(f"note: {redact(line)}", err=True)
            for line in r.problems:
                typer.echo(f"problem: {redact(line)}")
            if not r.problems:
                typer.echo(f"{display(store)}: OK")
                for line in r.checked:
                    typer.echo(f"  checked {line}")
        if r.problems:
            raise typer.Exit(2)


@app.command()
def export(
    run: Path = typer.Argument(..., help="Run folder (the config's `out`, after `kd run`)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    model: str = typer.Option("student", "--model", help="Which checkpoint: student, baseline or teacher."),
    int8: bool = typer.Option(False, "--int8", help="Also write onnxruntime's dynamic int8 quantisation, with its accuracy."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Refuse if max |Δlogit| (fp32 onnxruntime vs torch) exceeds this times max(1, max |logit|) [default: 1e-5]."),
    min_agreement: Optional[float] = typer.Option(None, "--min-agreement", help="Refuse if top-1 agreement is below this [default: 1.0]."),
    latency_runs: Optional[int] = typer.Option(None, "--latency-runs", min=1, help="Batch-1 calls timed per runtime [default: evaluate.latency_runs]."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Export a trained model to ONNX, check onnxruntime against torch on the test split, time both on CPU."""
    _state["debug"] |= debug
    with _errors():
        if fmt != "onnx":
            raise KDError(f"--format {fmt}: only onnx is supported")
        from .export import export_run, render

        r = export_run(run, model, int8, tolerance, min_agreement, latency_runs)
        if as_json:
            typer.echo(json.dumps(r, indent=2))
        else:
            render(r)


@app.command()
def merge(
    stores: List[Path] = typer.Argument(..., help="Stores of the same data, one per teacher."),
    out: Path = typer.Option(..., "--out", help="Folder of the merged (ensemble) store."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Mixture weights, one per store, e.g. 0.7,0.3 (normalised; default equal)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="The one temperature of the mixture; every store must declare it (default: the first common one)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", help="Ids kept per row (default: num_classes or the sum of the stores' k, the smaller)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Write the weighted mixture of several teachers' stores as one store (multi-teacher KD)."""
    _state["debug"] |= debug
    with _errors():
        from .merge import merge_stores, parse_weights

        m = merge_stores(stores, out, parse_weights(weights), temperature, top_k)
        w = ", ".join(f"{s['weight']:.4g}" for s in m.sources)
        typer.echo(f"{out}: mixture of {len(stores)} stores (weights {w}) at temperature {m.temperatures[0]:g}, top_k {m.top_k}, {m.num_rows:,} rows")


def main() -> None:
    app(prog_name="kd")


if __name__ == "__main__":
    sys.exit(main())
