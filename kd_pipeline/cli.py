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
    """`kd run --help` ends with the stages of each pipeline kind, read from the runner's stage lists when
    help is asked for (importing the stages loads torch: not for every `kd` call)."""

    def format_help(self, ctx, formatter) -> None:
        from .runner import PIPELINE_STAGES, load_stages

        kinds = [f"pipeline: {kind} -- {', '.join(s.NAME for s in load_stages(kind))}" for kind in PIPELINE_STAGES]
        self.epilog = "\n\n".join(["Stages, in the order they run (--stage NAME runs only the named ones):", *kinds])
        super().format_help(ctx, formatter)


@contextmanager
def _errors():
    try:
        yield
    except KDError as e:
        if _state["debug"]:
            raise
        typer.echo("error: " + " ".join(str(e).split("\n")), err=True)  # one line, even for odd input
        raise typer.Exit(2) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as e:
        if _state["debug"]:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        typer.echo(f"error: unexpected {type(e).__name__}: {first} (run with --debug for the traceback)", err=True)
        raise typer.Exit(1) from None


@app.command(cls=_RunCommand)
def run(
    pipeline: Path = typer.Argument(Path("pipeline.yaml"), help="Pipeline YAML."),
    stage: Optional[List[str]] = typer.Option(None, "--stage", help="Run only this stage (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Run stages even if up to date."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a config value: KEY=VALUE (YAML)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    """Run the pipeline; stages whose params and inputs are unchanged are skipped."""
    _state["debug"] |= debug
    with _errors():
        from .config import load_config
        from .progress import interval
        from .runner import run_pipeline

        interval()  # a bad KD_PROGRESS_INTERVAL fails now, not at the first long step
        try:
            run_pipeline(load_config(pipeline, set_ or []), stage or [], force)
        except KeyboardInterrupt:
            typer.echo(INTERRUPTED, err=True)
            if _state["debug"]:
                raise
            raise typer.Exit(130) from None  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


@app.command()
def inspect(
    store: Path = typer.Argument(..., help="Store folder."),
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
    store: Path = typer.Argument(..., help="Store folder."),
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
                typer.echo(f"note: {line}", err=True)
            for line in r.problems:
                typer.echo(f"problem: {line}")
            if not r.problems:
                typer.echo(f"{store}: OK")
                for line in r.checked:
                    typer.echo(f"  checked {line}")
        if r.problems:
            raise typer.Exit(2)


def main() -> None:
    app(prog_name="kd")


if __name__ == "__main__":
    sys.exit(main())
