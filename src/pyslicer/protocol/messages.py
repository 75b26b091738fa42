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
    SECRETS: Final = "secrets"
    COPY_IN: Final = "copy_in"
    COPY_OUT: Final = "copy_out"
    FS_STAT: Final = "fs_stat"
    FS_READDIR: Final = "fs_readdir"
    FS_MKDIR: Final = "fs_mkdir"
    FS_REMOVE: Final = "fs_remove"
    FS_WATCH: Final = "fs_watch"
    STATS: Final = "stats"
    SHELL: Final = "shell"
    FORWARD: Final = "forward"
    # Background execs: processes kept by the agent (not by a stream), each with an output ring.
    BG_START: Final = "bg_start"
    BG_LIST: Final = "bg_list"
    BG_INFO: Final = "bg_info"
    BG_LOGS: Final = "bg_logs"
    BG_KILL: Final = "bg_kill"
    BG_WAIT: Final = "bg_wait"
    BG_DELETE: Final = "bg_delete"
    # A guest restored from another's snapshot takes an identity of its own.
    IDENTITY: Final = "identity"


# A watch's event types (fsnotify's), in the agent's events and the daemon's checks alike.
WATCH_KINDS: Final = ("create", "write", "remove", "rename", "chmod")


class Event:
    """The ``type`` of a MESSAGE on an exec stream (and of a ``RequestError``)."""

    STARTED: Final = "started"
    EXIT: Final = "exit"
    ERROR: Final = "error"
    SOURCE: Final = "source"  # copy_out: what is about to stream
    DONE: Final = "done"  # secrets, copy_in, copy_out: finished
    CONNECTED: Final = "connected"  # forward: the guest-side connection is up
    RESIZE: Final = "resize"  # shell, host -> agent: the terminal's new size


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

    class IdentityRequest(TypedDict):
        """Take a new identity (a guest restored from a snapshot of another): answered by one IdentityDone
        once all of it is in place, or a RequestError naming what failed."""

        op: Literal["identity"]
        hostname: str
        machine_id: str  # 32 lowercase hex digits
        mac: str  # eth0's new address, aa:bb:cc:dd:ee:ff
        ip: str  # eth0's address with its prefix length ("" leaves eth0 down)
        gateway: str  # the default route ("" for none)
        seed: str  # hex: random bytes from the host, credited to the kernel's RNG, which is then reseeded
        window: NotRequired[int]  # added by the link

    class IdentityDone(TypedDict):
        type: Literal["done"]

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

    class CopyInRequest(TypedDict, total=False):
        """Write what arrives as DATA on stdin at ``path``: one file (``binary``) or a tar stream (``tar``).

        Placement is cp-like when ``cp_v1`` (the ``source_*`` fields say what the bytes are); see docs/protocol.md.
        """

        op: Required[Literal["copy_in"]]
        path: Required[str]  # absolute, or ~/..., or relative to the user's home; a trailing / matters
        mode: Required[Literal["binary", "tar"]]
        cp_v1: bool
        source_name: str
        source_type: Literal["file", "directory"]
        copy_contents: bool
        exclude: list[str]  # tar: entries to skip (Go SDK patterns)
        uid: int | None  # default: the guest's default user
        gid: int | None  # default: the uid's account group
        permissions: int | None  # binary: the file's mode (default 0644, or the replaced file's)
        unpacked_size: int | None  # bytes the upload will take; refused up front when the disk lacks them
        window: int

    class CopyOutRequest(TypedDict, total=False):
        """Send ``path`` as DATA on stdout: raw bytes of a file, or a tar of a directory's contents."""

        op: Required[Literal["copy_out"]]
        path: Required[str]
        mode: Required[Literal["binary", "tar", "recursive"]]  # recursive: a file raw, a directory as tar
        cp_v1: bool  # tar: refuse a file instead of sending a one-entry tar
        exclude: list[str]
        window: int

    Request = HealthRequest | UserdataRequest | ExecRequest | SecretsRequest | CopyInRequest | CopyOutRequest
    # and the fs requests further down

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
    CopyErrorCode = Literal[
        "path_not_found",
        "not_a_file",
        "not_a_directory",
        "invalid_path",
        "invalid_tar",
        "unsafe_entry",
        "no_space",
        "permission_denied",
        "failed",
    ]

    class CopySource(TypedDict):
        """copy_out, before any DATA: what streams (``directory``: a tar)."""

        type: Literal["source"]
        source_type: Literal["file", "directory"]
        name: str  # the basename; "" for a contents-only path (``dir/.``, ``/``)
        file_mode: str  # e.g. "0644"
        size: int  # a file's size (exactly what streams); 0 for a directory

    class CopyDone(TypedDict):
        """copy_in: everything is in place (``path``: where it landed); copy_out: every byte was sent."""

        type: Literal["done"]
        path: str
        size: int  # bytes received or sent

    class CopyError(TypedDict):
        """Nothing was written under the target (copy_in), or the stream is cut short (copy_out)."""

        type: Literal["error"]
        error: str
        code: CopyErrorCode

    CopyEvent = CopySource | CopyDone | CopyError
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
        dropped: NotRequired[int]  # events the host gave no credit for within the agent's grace (none: absent)

    # -- stats (agent/stats.py) ------------------------------------------------------------------------

    class StatsRequest(TypedDict):
        """``stats``: one MESSAGE ``StatsSnapshot``, then CLOSE."""

        op: Literal["stats"]
        window: NotRequired[int]

    class StatsSnapshot(TypedDict):
        """The guest as Slicer's ``/nodes/stats`` snapshot names it (byte counts are bytes; 0: not known)."""

        hostname: str
        arch: str  # uname -m: x86_64, aarch64
        timestamp: str  # RFC 3339 UTC with nanoseconds, the guest's clock (kept on the host's)
        uptime: str  # whole seconds as a Go duration: "6m53s"
        totalCpus: int
        totalMemory: int  # MemTotal
        memoryUsed: int  # MemTotal - MemAvailable
        memoryAvailable: int
        memoryUsedPercent: float
        loadAvg1: float
        loadAvg5: float
        loadAvg15: float
        diskReadTotal: int  # over whole disks (not partitions), since boot
        diskWriteTotal: int
        networkReadTotal: int  # over every interface but lo, since boot
        networkWriteTotal: int
        diskIOInflight: int
        openConnections: int  # TCP in ESTABLISHED or CLOSE-WAIT, v4 and v6 (CurrEstab of /proc/net/snmp)
        openFiles: int  # allocated file handles (/proc/sys/fs/file-nr)
        entropy: int
        diskSpaceTotal: int  # statvfs("/")
        diskSpaceUsed: int
        diskSpaceFree: int  # available to users (the root reserve is neither free nor used)
        diskSpaceUsedPercent: float  # used / total

    # -- shell ---------------------------------------------------------------------------------------

    class ShellRequest(TypedDict):
        """``shell``: a login shell on a new PTY. MESSAGE ``ExecStarted`` (or ``ExecError``) -> DATA on
        stdout (the terminal's output) and DATA on stdin from the host (keystrokes), MESSAGE ``ShellResize``
        from the host at any time -> MESSAGE ``ExecExit`` once the shell has exited and its output is sent ->
        CLOSE. A CLOSE from the host hangs the terminal up (SIGHUP to the session, SIGKILL to what is left)."""

        op: Literal["shell"]
        uid: int | None  # None: the guest's default user
        gid: int | None  # None: the user's account group
        shell: str | None  # None: the account's login shell, else /bin/bash, else /bin/sh
        cwd: str | None  # None: the user's home
        cols: int
        rows: int
        term: str  # TERM for the shell
        window: NotRequired[int]

    class ShellResize(TypedDict):
        """Host -> agent on a shell stream: set the terminal's size (the shell gets SIGWINCH)."""

        type: Literal["resize"]
        cols: int
        rows: int

    # -- forward -------------------------------------------------------------------------------------

    class ForwardRequest(TypedDict):
        """``forward``: one connection from the guest to ``host``:``port``, or to the unix socket ``path``.
        MESSAGE ``ForwardConnected`` (or ``ForwardError`` and CLOSE) -> DATA both ways (stdin: to the
        upstream, stdout: from it), EOF either way is a half-close -> once both ways reached EOF, MESSAGE
        ``ForwardDone`` -> CLOSE. A reset or write failure is a ``ForwardError`` and CLOSE."""

        op: Literal["forward"]
        host: NotRequired[str]
        port: NotRequired[int]
        path: NotRequired[str]
        window: NotRequired[int]

    class ForwardConnected(TypedDict):
        type: Literal["connected"]

    class ForwardError(TypedDict):
        type: Literal["error"]
        error: str
        errno: str  # ECONNREFUSED, ENOENT, ETIMEDOUT, ... ("" when there is none)

    class ForwardDone(TypedDict):
        type: Literal["done"]

    # -- background execs ----------------------------------------------------------------------------
    # The processes belong to the agent, not to a stream: they outlive the stream that started them, a HELLO
    # (a host reconnect) and the host's whole connection; only an agent restart loses them. Each answer is one
    # MESSAGE then CLOSE, except bg_logs and bg_wait; a failure is one ``BgError``.

    class BgStartRequest(ExecRequest, total=False):
        """``bg_start``: an ``ExecRequest`` (``stdin`` is ignored: the child reads /dev/null) plus its ring."""

        ring_bytes: int  # the output ring's cap; 0 or absent: the agent's default (1 MiB)
        stdio: str  # "base64" or "text": how log frames of this exec are encoded for clients

    class BgIdRequest(TypedDict):
        """``bg_info``, ``bg_delete``."""

        op: Literal["bg_info", "bg_delete"]
        exec_id: str
        window: NotRequired[int]

    class BgLogsRequest(TypedDict):
        """``bg_logs``: MESSAGE ``{"type": "started", "stdio"}``, then NDJSON ``BgLogRecord`` lines in DATA on
        stdout under the host's credit, until the ring is drained (or, with ``follow``, until the exit record
        went out or the exec was deleted), then EOF, MESSAGE ``{"type": "done"}``, CLOSE."""

        op: Literal["bg_logs"]
        exec_id: str
        follow: bool
        from_id: int  # 0: from the oldest record still in the ring
        window: NotRequired[int]

    class BgKillRequest(TypedDict):
        op: Literal["bg_kill"]
        exec_id: str
        signal: str  # TERM, KILL, INT, HUP, QUIT, USR1 or USR2
        grace_ms: int  # TERM only: SIGKILL to the group if it still runs this long after
        window: NotRequired[int]

    class BgWaitRequest(TypedDict):
        """``bg_wait``: answered once the exec has ended or ``timeout`` seconds passed (``timed_out``)."""

        op: Literal["bg_wait"]
        exec_id: str
        timeout: float
        window: NotRequired[int]

    class BgStarted(TypedDict):
        type: Literal["started"]
        exec_id: str  # "ex_" and 16 hex digits
        pid: int
        started_at: str
        ring_bytes: int

    class BgInfo(TypedDict):
        """One exec as ``bg_info`` answers it (``{"type": "info", ...}``) and ``bg_list`` lists it (in
        ``{"type": "list", "execs": [...]}``)."""

        exec_id: str
        pid: int
        command: str  # as given
        args: list[str]
        cwd: str
        uid: int
        started_at: str
        running: bool
        exit_code: int | None
        signal: NotRequired[str]
        ended_at: str | None
        bytes_written: int  # output bytes the process wrote
        bytes_dropped: int  # of those, evicted from the ring
        next_id: int  # the id the next record will get
        ring_bytes: int

    class BgLogRecord(TypedDict, total=False):
        """A record of the ring (ids from 1, one per record), or a ``gap`` (no id) where records were evicted
        before the reader got them. ``data`` is base64."""

        id: int
        type: Required[Literal["started", "stdout", "stderr", "exit", "gap"]]
        timestamp: str
        data: str  # stdout, stderr
        pid: int  # started
        started_at: str  # started
        exit_code: int  # exit
        ended_at: str  # exit
        signal: str  # exit, when killed
        dropped_bytes: int  # gap
        dropped_frames: int  # gap

    class BgError(TypedDict):
        type: Literal["error"]
        error: str
        code: str  # not_found, gone, running, budget_exhausted, too_many, invalid_ring, invalid_signal, launch_failed
        exit_code: NotRequired[int]  # launch_failed: 127 not found, 126 not executable
