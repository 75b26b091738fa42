"""Userdata: a script the host hands over once; it runs once per disk, as root, in the background."""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pyslicer.agent.loop import Loop

STATE_DIR = "/var/lib/slicer"
MARKER = f"{STATE_DIR}/userdata.exit"
SCRIPT = f"{STATE_DIR}/userdata.sh"
LOG = "/var/log/slicer-userdata.log"


class Userdata:
    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self.exit_code: int | None = None
        self.ran = False
        self._started = False
        try:
            with open(MARKER) as f:
                self.exit_code = int(f.read().strip())
            self.ran = True
        except (OSError, ValueError):
            pass

    def start(self, script: str) -> bool:
        """Start the script unless it ran already (on this disk) or is running."""
        if self.ran or self._started:
            return False
        if not script.strip():
            self.ran = True
            return False
        self._started = True
        self._loop.call_later(0, lambda: self._run(script))  # after the answer has gone out
        return True

    def _run(self, script: str) -> None:
        from pyslicer.agent.spawn import DEFAULT_PATH, spawn, watch_exit  # not needed before READY

        try:
            os.makedirs(STATE_DIR, exist_ok=True)
            with open(SCRIPT, "w") as f:
                f.write(script if script.startswith("#!") else "#!/bin/bash\n" + script)
            os.chmod(SCRIPT, 0o700)
            log = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        except Exception as exc:  # nothing ran; it stays "started", as an unfinished run does
            print(f"slicer-agent: cannot prepare userdata: {exc}", file=sys.stderr)
            return
        try:
            env = {"PATH": DEFAULT_PATH, "HOME": "/root", "USER": "root", "LANG": "C.UTF-8"}
            pid = spawn([SCRIPT], env, "/root", (None, log, log))
        except OSError as exc:
            os.write(log, f"slicer: cannot run userdata: {exc}\n".encode())
            self._finished(127)
            return
        finally:
            os.close(log)
        watch_exit(self._loop, pid, self._finished)

    def _finished(self, code: int) -> None:
        tmp = f"{STATE_DIR}/userdata.tmp"
        try:
            with open(tmp, "w") as f:
                f.write(f"{code}\n")
            os.replace(tmp, MARKER)
        except OSError as exc:
            print(f"slicer-agent: cannot record the userdata exit code: {exc}", file=sys.stderr)
            return
        self.exit_code = code
        self.ran = True
