"""Plumbing shared by the CLI commands: the client factories, API options, option types.

Nothing here imports the client at module level: ``slicer --help`` and usage errors never load httpx, and a
client is built the first time a command asks for ``api.client`` (or ``api.exec_client``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar

import click
from click.core import ParameterSource

from pyslicer.durations import parse_go_duration
from pyslicer.errors import SlicerError

from ._output import dumps

if TYPE_CHECKING:
    from pyslicer.client import SlicerClient
    from pyslicer.client._socket_exec import SocketExecClient

    _ParamType = click.ParamType[Any]
else:  # click < 8.2 has no generic ParamType
    _ParamType = click.ParamType

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DATA_DIR = "/var/lib/slicer"
"""(Paths stay strings until a command needs a ``Path``: pathlib costs ``slicer --help`` ~4 ms.)"""

ClientFactory = Callable[[str | None, str | None, str | None], "SlicerClient"]
"""Builds a client from ``--url``, ``--token`` and ``--token-file`` (each None when not given)."""

ExecClientFactory = Callable[[str | None, str | None, str | None], "SlicerClient | SocketExecClient"]
"""Builds the client ``vm exec`` runs its command with, from the same three options."""


def default_client_factory(url: str | None, token: str | None, token_file: str | None) -> SlicerClient:
    from pyslicer.client import SlicerClient

    return SlicerClient(url=url, token=token, token_file=token_file)


def default_exec_client_factory(
    url: str | None, token: str | None, token_file: str | None
) -> SlicerClient | SocketExecClient:
    """``SocketExecClient``, the client's exec without httpx (so ``vm exec`` starts 40-60 ms sooner), or
    ``SlicerClient`` for an https endpoint, which it does not speak."""
    from pyslicer.client._socket_exec import SocketExecClient
    from pyslicer.errors import NotSupported

    try:
        return SocketExecClient(url=url, token=token, token_file=token_file)
    except NotSupported:
        return default_client_factory(url, token, token_file)


class CliState:
    """The click context ``obj``: tests pass one with factories of clients on a mock transport."""

    def __init__(
        self,
        client_factory: ClientFactory = default_client_factory,
        exec_client_factory: ExecClientFactory = default_exec_client_factory,
    ) -> None:
        self.client_factory = client_factory
        self.exec_client_factory = exec_client_factory


class Api:
    """What an API command gets: lazily built clients and the output mode."""

    def __init__(self, state: CliState, url: str | None, token: str | None, token_file: str | None, json: bool):
        self._state = state
        self._args = (url, token, token_file)
        self._client: SlicerClient | None = None
        self._exec_client: SlicerClient | SocketExecClient | None = None
        self.json = json

    @property
    def client(self) -> SlicerClient:
        if self._client is None:
            self._client = self._state.client_factory(*self._args)
        return self._client

    @property
    def exec_client(self) -> SlicerClient | SocketExecClient:
        """What ``vm exec`` streams a command through (see ``default_exec_client_factory``)."""
        if self._exec_client is None:
            self._exec_client = self._state.exec_client_factory(*self._args)
        return self._exec_client

    def close(self) -> None:
        for client in (self._client, self._exec_client):
            if client is not None:
                client.close()

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
        type=click.Path(file_okay=False),
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
        api = Api(state, url, token, token_file, as_json)
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


def wait_for(choice: str | None) -> Literal["agent", "userdata"] | None:
    """A ``--wait`` choice as the client takes it: ``none`` (or no choice) waits for nothing."""
    if choice == "agent":
        return "agent"
    if choice == "userdata":
        return "userdata"
    return None
