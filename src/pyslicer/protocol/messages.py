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
unknown op is answered by one ``RequestError`` and CLOSE. The ``fs_*`` ops are described at their
requests below.
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
    FS_STAT: Final = "fs_stat"
    FS_READDIR: Final = "fs_readdir"
    FS_MKDIR: Final = "fs_mkdir"
    FS_REMOVE: Final = "fs_remove"
    FS_WATCH: Final = "fs_watch"


class Event:
    """The ``type`` of a MESSAGE on an exec stream (and of a ``RequestError``)."""

    STARTED: Final = "started"
    EXIT: Final = "exit"
    ERROR: Final = "error"


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

    Request = HealthRequest | UserdataRequest | ExecRequest  # and the fs requests further down

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

    # -- the filesystem (agent/fs.py, agent/watch.py) --------------------------------------------------
    # Paths are absolute, or "~" / "~/..." (the home of ``uid``, default root). The agent answers with os
    # calls of its own, never by running a command. Every fs stream ends with CLOSE after its last MESSAGE.

    class FsEntry(TypedDict):
        """One entry as lstat sees it (a symlink is not followed)."""

        name: str
        type: Literal["file", "directory", "symlink", "other"]
        size: int
        mtime: str  # RFC 3339 UTC with nanoseconds
        mode: str  # permission bits in octal, "0644" (with setuid/setgid/sticky: "4755")

    class FsPathRequest(TypedDict):
        """``fs_stat``: one ``FsDone`` with ``entry``. ``fs_readdir``: the entries as NDJSON (one ``FsEntry``
        a line) in DATA on stdout under the host's credit, EOF, then ``FsDone``. ``fs_remove``: ``FsDone``."""

        op: Literal["fs_stat", "fs_readdir", "fs_remove"]
        path: str
        recursive: NotRequired[bool]  # fs_remove: a directory with everything in it
        window: NotRequired[int]  # added by the link

    class FsMkdirRequest(TypedDict):
        """``fs_mkdir``: ``FsDone`` with the new directory's ``entry``."""

        op: Literal["fs_mkdir"]
        path: str
        recursive: bool  # create missing parents, and accept an existing directory (mkdir -p)
        mode: int  # applied exactly (not masked by the umask) to every directory created
        window: NotRequired[int]

    class FsDone(TypedDict):
        type: Literal["done"]
        path: str  # the path as resolved (~ expanded)
        entry: NotRequired[FsEntry]

    class FsError(TypedDict):
        """The op failed: ``errno`` is the symbolic name (``ENOENT``, ``EEXIST``, ``ENOTEMPTY``, ...)."""

        type: Literal["error"]
        error: str
        errno: str

    class FsWatchRequest(TypedDict):
        """``fs_watch``: MESSAGE ``FsWatchStarted`` (or ``FsError``), then events as NDJSON (one
        ``FsWatchEvent`` a line) in DATA on stdout under the host's credit, until the host cancels or nothing
        is left to watch (EOF, then ``FsWatchEnded``)."""

        op: Literal["fs_watch"]
        paths: list[str]
        patterns: list[str]  # Go path.Match globs, against the full path or the base name; none: all
        events: list[str]  # create, write, remove, rename, chmod; none: all
        recursive: bool  # watch subdirectories too, and those created later
        debounce_ms: int  # coalesce events of one type and path over this window; 0: send at once
        uid: int | None  # whose home "~" is
        window: NotRequired[int]

    class FsWatchStarted(TypedDict):
        type: Literal["started"]
        paths: list[str]  # resolved
        watches: int  # inotify watches placed

    class FsWatchEvent(TypedDict):
        """One change. ``type`` "overflow" is no change but a note that events were lost (``message``)."""

        type: Literal["create", "write", "remove", "rename", "chmod", "overflow"]
        path: str
        timestamp: str  # RFC 3339 UTC with nanoseconds, when the agent read it
        size: int  # the path's size then (0 once removed)
        isDir: bool
        message: NotRequired[str]

    class FsWatchEnded(TypedDict):
        type: Literal["ended"]
        reason: str
