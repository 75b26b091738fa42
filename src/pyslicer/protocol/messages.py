"""The agent's vocabulary: what the JSON payloads of READY, HELLO, OPEN and MESSAGE frames hold.

The constants are plain strings, usable at run time by both ends. The message shapes are TypedDicts that
exist for type checking only (``typing`` is an import the agent does without): import them under
``TYPE_CHECKING`` and build the dicts as literals, e.g.::

    request: ExecRequest = {"op": Op.EXEC, "cmd": "uname", "args": ["-a"]}
    stream = link.open(request)

What arrives from the other end is untrusted JSON: read it with ``.get`` and check the types.

An exec stream, in order: OPEN ``ExecRequest`` -> MESSAGE ``ExecStarted`` -> DATA/EOF on stdout and stderr
(and on stdin from the host) -> MESSAGE ``ExecExit`` -> CLOSE; or, when the command cannot start, one
MESSAGE ``ExecError`` and CLOSE. ``health`` and ``userdata`` are answered by one MESSAGE and CLOSE. An
unknown op is answered by one ``RequestError`` and CLOSE.

A secrets stream: OPEN ``SecretsRequest`` -> DATA on stdin (each file's bytes, in order) and EOF from the host
-> MESSAGE ``SecretsDone`` (or ``RequestError``) -> CLOSE.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Literal, NotRequired, Required, TypedDict


class Op:
    """The ``op`` of an OPEN request."""

    HEALTH: Final = "health"
    USERDATA: Final = "userdata"
    EXEC: Final = "exec"
    SECRETS: Final = "secrets"


class Event:
    """The ``type`` of a MESSAGE on an exec stream (and of a ``RequestError``)."""

    STARTED: Final = "started"
    EXIT: Final = "exit"
    ERROR: Final = "error"
    DONE: Final = "done"  # a secrets stream's answer


if TYPE_CHECKING:
    # -- stream 0 ------------------------------------------------------------------------------------

    class Hello(TypedDict):
        """HELLO: a (new) host connection. The agent drops every stream and answers READY."""

        version: int
        time: NotRequired[float]  # host epoch seconds; read only by version-1 agents (disks from before CLOCK)

    class Ready(TypedDict):
        """READY: the agent's identity. A new ``instance`` means the agent restarted."""

        version: int
        agent_version: str
        instance: str
        hostname: str

    # -- requests (OPEN) -----------------------------------------------------------------------------

    class HealthRequest(TypedDict):
        op: Literal["health"]
        time: NotRequired[float]  # as in Hello: for version-1 agents, which set their clock from it
        window: NotRequired[int]  # added by the link

    class HealthAnswer(TypedDict):
        hostname: str
        agent_uptime: int  # ns since the agent started (at least 1)
        agent_version: str
        system_uptime: int  # ns of CLOCK_BOOTTIME
        userdata_ran: bool
        userdata_exit_code: NotRequired[int]  # once the userdata script has finished

    class UserdataRequest(TypedDict):
        """Run ``script`` once per disk, as root, in the background (not again once it has run)."""

        op: Literal["userdata"]
        script: str
        window: NotRequired[int]  # added by the link

    class UserdataAnswer(TypedDict):
        started: bool  # false: it ran on this disk already, is running, or the script is empty

    class ExecRequest(TypedDict, total=False):
        """Run a command. Absent or null fields take the defaults."""

        op: Required[Literal["exec"]]
        cmd: Required[str]
        args: list[str]
        env: list[str]  # KEY=VALUE, over PATH, HOME, USER, LOGNAME and LANG
        uid: int | None  # default 0 (root)
        gid: int | None  # default: the uid's account group
        cwd: str | None  # default: the account's home, or /
        shell: str | None  # run "<shell> -c '<cmd> <quoted args>'" instead of cmd itself
        stdin: bool  # pipe stdin from the stream's DATA/EOF; without it the child reads /dev/null
        window: int  # added by the link: the credit for output bytes the host grants at the start

    class SecretFile(TypedDict):
        """One file of a ``SecretsRequest``: its bytes follow on the stream, in the request's order."""

        name: str  # a plain file name: no "/", NUL, or leading "."
        size: int
        mode: int  # permission bits, at most 0o777
        uid: int
        gid: int

    class SecretsRequest(TypedDict):
        """The whole set of secrets the guest should hold under /run/slicer/secrets: their bytes follow as
        DATA on the stdin channel, then EOF. Files not in the set are removed."""

        op: Literal["secrets"]
        secrets: list[SecretFile]
        window: NotRequired[int]  # added by the link

    Request = HealthRequest | UserdataRequest | ExecRequest | SecretsRequest

    # -- events (MESSAGE) ----------------------------------------------------------------------------

    class ExecStarted(TypedDict):
        type: Literal["started"]
        pid: int
        started_at: str  # RFC 3339 UTC, taken just before the spawn

    class ExecExit(TypedDict):
        """Sent once stdout and stderr have reached EOF and the process is reaped."""

        type: Literal["exit"]
        exit_code: int  # 128 + the signal number when killed by a signal
        ended_at: str
        signal: NotRequired[str]  # e.g. "SIGKILL", when killed by a signal

    class ExecError(TypedDict):
        """The command could not start (127: not found, 126: not executable) or the agent failed."""

        type: Literal["error"]
        error: str
        exit_code: int

    class RequestError(TypedDict):
        """An OPEN the agent does not understand (an unknown op)."""

        type: Literal["error"]
        error: str

    ExecEvent = ExecStarted | ExecExit | ExecError

    # -- secrets -------------------------------------------------------------------------------------

    class SecretsDone(TypedDict):
        type: Literal["done"]
        written: int
        removed: int

    SecretsAnswer = SecretsDone | RequestError
