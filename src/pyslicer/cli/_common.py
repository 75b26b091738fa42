"""Plumbing shared by the CLI commands: the client factory, API options, option types."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from pyslicer.client import SlicerClient
from pyslicer.durations import parse_go_duration
from pyslicer.errors import SlicerError

from ._output import dumps

if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]
else:  # click < 8.2 has no generic ParamType
    _ParamType = click.ParamType

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATA_DIR = Path("/var/lib/slicer")

ClientFactory = Callable[[str | None, str | None, str | None], SlicerClient]
"""Builds a client from ``--url``, ``--token`` and ``--token-file`` (each None when not given)."""


def default_client_factory(url: str | None, token: str | None, token_file: str | None) -> SlicerClient:
    return SlicerClient(url=url, token=token, token_file=token_file)


@dataclass
class CliState:
    """The click context ``obj``: tests pass one with a client factory on a mock transport."""

    client_factory: ClientFactory = default_client_factory


class Api:
    """What an API command gets: a lazily built client and the output mode."""

    def __init__(self, factory: ClientFactory, url: str | None, token: str | None, token_file: str | None, json: bool):
        self._factory = factory
        self._args = (url, token, token_file)
        self._client: SlicerClient | None = None
        self.json = json

    @property
    def client(self) -> SlicerClient:
        if self._client is None:
            self._client = self._factory(*self._args)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def emit(self, data: Any, human: Callable[[], str]) -> None:
        """``data`` as JSON with ``--json``, else the human rendering (nothing when it is empty)."""
        if self.json:
            click.echo(dumps(data))
            return
        text = human()
        if text:
            click.echo(text)


def data_dir_option(func: Callable[P, R]) -> Callable[P, R]:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        envvar="SLICER_DATA_DIR",
        show_default=True,
        show_envvar=True,
        help="Where slicer keeps images, disks and its auth token.",
    )(func)


def api_command(func: Callable[Concatenate[Api, P], R]) -> Callable[P, R]:
    """Add ``--url``, ``--token``, ``--token-file`` and ``--json``; pass the command an ``Api`` first."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        options: dict[str, Any] = kwargs
        url = options.pop("url")
        token = options.pop("token")
        token_file = options.pop("token_file")
        as_json = bool(options.pop("as_json"))
        ctx = click.get_current_context()
        # A --token-file typed on the command line beats a SLICER_TOKEN inherited from the environment.
        if (
            ctx.get_parameter_source("token_file") is ParameterSource.COMMANDLINE
            and ctx.get_parameter_source("token") is not ParameterSource.COMMANDLINE
        ):
            token = None
        state = ctx.find_object(CliState) or CliState()
        api = Api(state.client_factory, url, token, token_file, as_json)
        try:
            return func(api, *args, **kwargs)
        finally:
            api.close()

    decorators = [
        click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON."),
        click.option(
            "--token-file",
            envvar="SLICER_TOKEN_FILE",
            show_envvar=True,
            metavar="FILE",
            help="Read the API token from FILE.",
        ),
        click.option("--token", envvar="SLICER_TOKEN", show_envvar=True, help="API token (Bearer)."),
        click.option(
            "--url",
            envvar="SLICER_URL",
            show_envvar=True,
            metavar="URL",
            help="Slicer API URL or unix socket path [default: http://127.0.0.1:8080].",
        ),
    ]
    command: Callable[P, R] = wrapper
    for decorator in decorators:
        command = decorator(command)
    return command


class Duration(_ParamType):
    """A Go duration (``30s``, ``5m``, ``1m30s``) or plain seconds, converted to seconds."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            text = str(value).strip()
            try:
                seconds = float(text)
            except ValueError:
                try:
                    seconds = parse_go_duration(text)
                except SlicerError:
                    self.fail(f"{value!r} is not a duration (use e.g. 30s, 5m, 1m30s)", param, ctx)
        if seconds < 0 or seconds != seconds:
            self.fail(f"{value!r} is not a positive duration", param, ctx)
        return seconds


class KeyValue(_ParamType):
    """``KEY=VALUE``, kept as the string."""

    name = "KEY=VALUE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        key, sep, _ = text.partition("=")
        if not sep or not key:
            self.fail(f"{text!r} is not KEY=VALUE", param, ctx)
        return text
