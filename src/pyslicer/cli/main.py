"""The ``slicer`` command.

Start-up is kept to click and our own small modules: the client (httpx), its models (pydantic), asyncio and
the daemon are imported by the commands that use them, so ``slicer --help`` starts in a few times a bare
``python -c pass`` (``bench/bench_cli.py`` measures it).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from pyslicer import __version__
from pyslicer.client.errors import SlicerAPIError
from pyslicer.errors import SlicerError

from ._common import Api, CliState, api_command, data_dir_option
from ._output import fields
from .background import bg
from .commits import commit, vm_commit, vm_fork
from .cp import vm_cp
from .fs import fs
from .lifecycle import LIFECYCLE_COMMANDS
from .secret import secret
from .shell import vm_forward, vm_shell
from .top import vm_top
from .vm import vm


def _fail(message: str, hint: str | None = None) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)


class SlicerGroup(click.Group):
    """Turns every failure into ``error: <message>`` and exit status 1; never a traceback.

    Set ``SLICER_DEBUG=1`` to see the traceback of an unexpected error.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except SlicerAPIError as exc:
            hint = None
            if exc.status == 401:
                hint = "pass --token or --token-file (the daemon writes its token to <data-dir>/auth/token)"
            _fail(exc.message, hint)
        except SlicerError as exc:
            _fail(exc.message)
        except KeyboardInterrupt:
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`slicer vm list | head`): stop quietly, and keep Python's
            # exit-time flush from complaining about the same closed pipe.
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            ctx.exit(141)
        except Exception as exc:
            if os.environ.get("SLICER_DEBUG"):
                raise
            _fail(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        ctx.exit(1)


@click.group(cls=SlicerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="slicer")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Slicer: micro-VMs behind a REST API."""
    ctx.ensure_object(CliState)


@cli.command()
@click.argument("config", required=False, type=click.Path(exists=True, dir_okay=False))
@data_dir_option
def up(config: str | None, data_dir: str) -> None:
    """Run the slicer daemon (in the foreground) with CONFIG, a YAML file."""
    from pathlib import Path

    from pyslicer.config import load_config
    from pyslicer.serve import serve

    serve(load_config(Path(config) if config is not None else None), data_dir=Path(data_dir))


@cli.group()
def image() -> None:
    """Manage the guest image."""


@image.command("build")
@data_dir_option
@click.option("--force", is_flag=True, help="Rebuild even when the image is up to date.")
def image_build(data_dir: str, force: bool) -> None:
    """Build (or check) the guest kernel, initrd and root filesystem."""
    import asyncio
    from pathlib import Path

    from pyslicer.image import ensure_image

    asyncio.run(ensure_image(Path(data_dir), progress=click.echo, force=force))


@cli.command()
@api_command
def info(api: Api) -> None:
    """Show the daemon's version and platform."""
    data = api.client.info()
    pairs = [
        ("url", api.client.url),
        ("version", data.version or "-"),
        ("git commit", data.git_commit or "-"),
        ("platform", data.platform or "-"),
        ("arch", data.arch or "-"),
    ]
    api.emit(data, lambda: fields(pairs))


vm.add_command(vm_cp)
vm.add_command(fs)
for command in LIFECYCLE_COMMANDS:
    vm.add_command(command)
vm.add_command(vm_top)
vm.add_command(vm_shell)
vm.add_command(vm_forward)
vm.add_command(bg)
vm.add_command(vm_commit)
vm.add_command(vm_fork)
cli.add_command(vm)
cli.add_command(commit)
cli.add_command(vm_shell, "shell")
cli.add_command(secret)


def main() -> None:
    # httpx's package __init__ imports httpx's own command line, and with it rich and pygments whenever they
    # happen to be installed (~40 ms here; encode/httpx#3547). slicer never runs it, and httpx falls back to a
    # stub when that import fails, so the console script makes it fail. Library users are not affected.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    cli(prog_name="slicer")


if __name__ == "__main__":
    main()
