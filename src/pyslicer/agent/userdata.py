"""Userdata: a script the host hands over once; it runs once per disk, as root."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

STATE_DIR = Path("/var/lib/slicer")
MARKER = STATE_DIR / "userdata.exit"
SCRIPT = STATE_DIR / "userdata.sh"
LOG = Path("/var/log/slicer-userdata.log")


class Userdata:
    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.ran = False
        self._task: asyncio.Task[None] | None = None
        try:
            self.exit_code = int(MARKER.read_text().strip())
            self.ran = True
        except (OSError, ValueError):
            pass

    def start(self, script: str) -> bool:
        """Start the script unless it ran already (on this disk) or is running."""
        if self.ran or self._task is not None:
            return False
        if not script.strip():
            self.ran = True
            return False
        self._task = asyncio.get_running_loop().create_task(self._run(script))
        return True

    async def _run(self, script: str) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        SCRIPT.write_text(script if script.startswith("#!") else "#!/bin/bash\n" + script)
        SCRIPT.chmod(0o700)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "USER": "root",
            "LANG": "C.UTF-8",
        }
        with LOG.open("ab") as log:
            try:
                proc = await asyncio.create_subprocess_exec(
                    str(SCRIPT), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, cwd="/root", env=env
                )
                code = await proc.wait()
            except OSError as exc:
                log.write(f"slicer: cannot run userdata: {exc}\n".encode())
                code = 127
        tmp = MARKER.with_suffix(".tmp")
        tmp.write_text(f"{code}\n")
        os.replace(tmp, MARKER)
        self.exit_code = code
        self.ran = True
