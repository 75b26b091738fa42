"""The daemon's data dir: one daemon per dir (an flock), where each VM's files live, the API token,
and the pinned base images that overlays point at."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
import shutil
from pathlib import Path
from typing import IO

from pyslicer.errors import ConfigError
from pyslicer.image import GuestImage

MAX_SOCKET_PATH = 100
SUBDIRS = ("disks", "logs", "auth", "commits", "states")


class DataDir:
    def __init__(self, path: Path) -> None:
        self.path = path.absolute()  # qcow2 overlays record their base by absolute path
        self.run_root = self._choose_run_root()
        self._lock: IO[str] | None = None

    def _choose_run_root(self) -> Path:
        root = self.path / "run"
        # Unix socket paths are limited to 108 bytes. The fallback is named after the data dir, so a
        # daemon that died is cleaned up by the next one on the same data dir.
        if len(str(root / ("x" * 40) / "agent.sock")) > MAX_SOCKET_PATH:
            return Path("/run/pyslicer") / hashlib.sha256(str(self.path).encode()).hexdigest()[:12]
        return root

    @property
    def held(self) -> bool:
        return self._lock is not None

    @property
    def token_path(self) -> Path:
        return self.path / "auth" / "token"

    def disk(self, hostname: str) -> Path:
        return self.path / "disks" / f"{hostname}.qcow2"

    def saved_state(self, hostname: str) -> Path:
        """A suspended VM's state (its memory and devices; its disk stays where it is)."""
        return self.path / "states" / f"{hostname}.vmstate"

    def saved_state_owners(self) -> set[str]:
        return {path.stem for path in (self.path / "states").glob("*.vmstate")}

    def console_log(self, hostname: str) -> Path:
        return self.path / "logs" / f"{hostname}.log"

    @property
    def commits_dir(self) -> Path:
        return self.path / "commits"  # on the disks' filesystem: a commit is a hard link to a VM's disk

    @property
    def secrets_dir(self) -> Path:
        return self.path / "secrets"

    def run_dir(self, hostname: str) -> Path:
        return self.run_root / hostname

    def run_dirs(self) -> list[Path]:
        """The run dirs there are now (an earlier daemon's too)."""
        return sorted(path for path in self.run_root.iterdir() if path.is_dir()) if self.run_root.is_dir() else []

    def disk_owners(self) -> set[str]:
        """The hostnames that have a disk or a console log here."""
        disks = {path.stem for path in (self.path / "disks").glob("*.qcow2")}
        return disks | {path.stem for path in (self.path / "logs").glob("*.log")}

    # -- holding it ----------------------------------------------------------------------------
    def hold(self) -> None:
        """Take the dir for this daemon and prepare it (what an earlier daemon left is the fleet's to adopt).

        Raises ConfigError when another daemon holds it: a second one would clean up the first
        one's sockets and disks."""
        self.path.mkdir(parents=True, exist_ok=True)
        lock = (self.path / "daemon.lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise ConfigError(f"data dir {self.path} is in use by another slicer daemon") from None
        self._lock = lock
        for sub in SUBDIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        self.run_root.mkdir(parents=True, exist_ok=True)

    def release(self, *, keep_run_dirs: bool = False) -> None:
        """Let the dir go; the run dirs stay when VMs were left running for the next daemon."""
        if not keep_run_dirs:
            shutil.rmtree(self.run_root, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    # -- contents ------------------------------------------------------------------------------
    def load_token(self) -> str:
        """The API token, made (0600) on first use."""
        path = self.token_path
        with contextlib.suppress(FileNotFoundError):
            token = path.read_text().strip()
            if token:
                return token
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        os.chmod(path, 0o600)
        return token

    async def pinned_base(self, image: GuestImage) -> Path:
        """The base rootfs under a name that is its content, so rebuilding the image never changes the
        base beneath an existing overlay (which would corrupt that disk)."""
        digest = str(image.manifest["outputs"]["rootfs.ext4"]["sha256"])[:16]
        pinned = image.rootfs.parent.parent / "bases" / f"rootfs-{digest}.ext4"
        if not pinned.exists():
            pinned.parent.mkdir(exist_ok=True)
            staging = pinned.with_name(f".{pinned.name}.{os.getpid()}")
            await asyncio.to_thread(os.link, image.rootfs, staging)
            os.replace(staging, pinned)
        return pinned
