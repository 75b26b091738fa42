"""``slicer vm bg ...``: commands the VM's agent keeps running after the CLI has gone, and their output rings."""

from __future__ import annotations

import base64
import json
import sys
from typing import TYPE_CHECKING

import click

from ._common import Api, KeyValue, api_command
from ._output import fields, human_bytes, table, timestamp

if TYPE_CHECKING:
    from pyslicer.client import BackgroundExecInfo, LogFrame

SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2")


@click.group("bg")
def bg() -> None:
    """Run commands in the background in a VM, then follow, wait for, signal and remove them."""


@bg.command("exec")
@click.argument("hostname")
@click.argument("command", nargs=-1, required=True)
@click.option("--uid", type=click.IntRange(min=0), help="Run as this user id.")
@click.option("--gid", type=click.IntRange(min=0), help="Run with this group id.")
@click.option("--cwd", help="Working directory.")
@click.option("--shell", help="Run the command through this shell.")
@click.option("--env", "-e", "env", multiple=True, type=KeyValue(), help="Set an environment variable (repeatable).")
@click.option("--ring-bytes", type=click.IntRange(min=1), help="Keep this much of its output [default: 1 MiB].")
@api_command
def bg_exec(
    api: Api,
    hostname: str,
    command: tuple[str, ...],
    uid: int | None,
    gid: int | None,
    cwd: str | None,
    shell: str | None,
    env: tuple[str, ...],
    ring_bytes: int | None,
) -> None:
    """Start COMMAND in a VM and print its exec id; it keeps running when this command returns.

    Put -- before the command when it has options: slicer vm bg exec vm-1 -- python3 -m http.server
    """
    started = api.client.exec_background(
        hostname,
        command[0],
        command[1:],
        env=list(env) or None,
        uid=uid,
        gid=gid,
        cwd=cwd,
        shell=shell,
        ring_bytes=ring_bytes,
    )
    api.emit(started, lambda: started.exec_id)


def _state(info: BackgroundExecInfo) -> str:
    if info.running:
        return "running"
    if info.signal:
        return f"killed ({info.signal})"
    return f"exited ({info.exit_code})"


@bg.command("list")
@click.argument("hostname")
@api_command
def bg_list(api: Api, hostname: str) -> None:
    """List the background execs of a VM (running, or ended and not removed)."""
    execs = api.client.background_execs(hostname)
    rows = [
        [
            info.exec_id,
            str(info.pid),
            _state(info),
            timestamp(info.started_at),
            human_bytes(info.bytes_written),
            " ".join([info.command, *info.args]),
        ]
        for info in execs
    ]
    api.emit(execs, lambda: table(["EXEC ID", "PID", "STATE", "STARTED", "OUTPUT", "COMMAND"], rows) if rows else "")


@bg.command("info")
@click.argument("hostname")
@click.argument("exec_id")
@api_command
def bg_info(api: Api, hostname: str, exec_id: str) -> None:
    """Show one background exec."""
    info = api.client.background_exec(hostname, exec_id)
    pairs = [
        ("exec id", info.exec_id),
        ("pid", str(info.pid)),
        ("command", " ".join([info.command, *info.args])),
        ("cwd", info.cwd or "-"),
        ("uid", str(info.uid)),
        ("state", _state(info)),
        ("started", timestamp(info.started_at)),
        ("ended", timestamp(info.ended_at) if info.ended_at else "-"),
        ("output", f"{human_bytes(info.bytes_written)} written, {human_bytes(info.bytes_dropped)} dropped"),
        ("ring", human_bytes(info.ring_bytes)),
        ("next id", str(info.next_id)),
    ]
    api.emit(info, lambda: fields(pairs))


def _frame_json(frame: LogFrame) -> str:
    body: dict[str, object] = {"type": frame.type, "timestamp": frame.timestamp}
    if frame.id:
        body["id"] = frame.id
    if frame.type in ("stdout", "stderr"):
        body["data"] = base64.b64encode(frame.data).decode()
        body["encoding"] = "base64"
    for name in ("pid", "exit_code", "signal", "message"):
        value = getattr(frame, name)
        if value is not None:
            body[name] = value
    if frame.type == "gap":
        body["dropped_frames"], body["dropped_bytes"] = frame.dropped_frames, frame.dropped_bytes
    return json.dumps(body)


@bg.command("logs")
@click.argument("hostname")
@click.argument("exec_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new output until the exec ends.")
@click.option("--from-id", type=click.IntRange(min=0), help="Start at this frame id [default: the oldest kept].")
@api_command
def bg_logs(api: Api, hostname: str, exec_id: str, follow: bool, from_id: int | None) -> None:
    """Print a background exec's output (stdout to stdout, stderr to stderr; frames as JSON lines with --json).

    A note on stderr says where output left the ring before it was read."""
    frames = api.client.background_logs(hostname, exec_id, follow=follow, from_id=from_id)
    stdout, stderr = sys.stdout.buffer, sys.stderr.buffer
    try:
        for frame in frames:
            if api.json:
                click.echo(_frame_json(frame))
            elif frame.type in ("stdout", "stderr"):
                stream = stdout if frame.type == "stdout" else stderr
                stream.write(frame.data)
                stream.flush()
            elif frame.type == "gap":
                click.echo(f"[{frame.message or f'{frame.dropped_bytes} bytes dropped'}]", err=True)
    finally:
        frames.close()


@bg.command("kill")
@click.argument("hostname")
@click.argument("exec_id")
@click.option("--signal", "-s", "signal_name", type=click.Choice(SIGNALS, case_sensitive=False), default="TERM")
@click.option("--grace-ms", type=click.IntRange(min=0), help="After TERM, KILL when still running [default: 5000].")
@api_command
def bg_kill(api: Api, hostname: str, exec_id: str, signal_name: str, grace_ms: int | None) -> None:
    """Signal a background exec's process group."""
    result = api.client.kill_background(hostname, exec_id, signal=signal_name.upper(), grace_ms=grace_ms)
    api.emit(result, lambda: f"sent {result.signal_sent}" if result.signal_sent else "it had ended already")


@bg.command("wait")
@click.argument("hostname")
@click.argument("exec_id")
@click.option("--timeout", type=click.FloatRange(min=0, max=600), help="Seconds to wait [default: 30, at most 600].")
@api_command
def bg_wait(api: Api, hostname: str, exec_id: str, timeout: float | None) -> None:
    """Wait until a background exec ends; exits with its exit code (or 124 when it still runs at the timeout)."""
    status = api.client.wait_background(hostname, exec_id, timeout)
    if status.timed_out:
        api.emit(status, lambda: "still running")
        sys.exit(124)
    api.emit(status, lambda: f"killed by {status.signal}" if status.signal else f"exited with {status.exit_code}")
    code = status.exit_code or 0
    sys.exit(code if 0 <= code <= 255 else 1)


@bg.command("rm")
@click.argument("hostname")
@click.argument("exec_ids", nargs=-1, required=True)
@api_command
def bg_rm(api: Api, hostname: str, exec_ids: tuple[str, ...]) -> None:
    """Remove ended background execs and free their rings (kill a running one first)."""
    for exec_id in exec_ids:
        api.client.delete_background(hostname, exec_id)
    api.emit([{"exec_id": exec_id, "reaped": True} for exec_id in exec_ids], lambda: "")
