"""Fast create: per host group, a snapshot of a freshly booted guest that new nodes are restored from.

A template is a directory under ``<data dir>/templates/<group>/<key>``, where the key is everything the
snapshot depends on (the image, the kernel, the group's shape, the accelerator, QEMU): ``disk.qcow2`` (the
guest's disk as it was, the backing file of every node made from it), ``memory.ram`` (its RAM: the template
VM ran with it as a shared file, so its saved state leaves RAM out, and each node maps it copy-on-write, so
idle nodes share its pages) and ``state.vmstate`` (vCPUs and devices). It is built in ``.building-<key>``
and renamed into place when complete, so a directory under its key is always whole.

It is made in the background at a group's first create (creates meanwhile boot cold) and again when the key
changes. A template that is no longer current loses its RAM and state at once (no node will be restored from
it again; running nodes keep their mappings), and its disk once no node's disk is layered on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pyslicer.daemon.agent_link import AgentLink
from pyslicer.daemon.host_groups import HostGroup
from pyslicer.daemon.storage import create_overlay
from pyslicer.errors import AgentError, SlicerError
from pyslicer.image import GuestImage
from pyslicer.net import Lease
from pyslicer.protocol import Op
from pyslicer.vmm import GuestMemory, Hypervisor, Nic, VMProcess, VMSpec

if TYPE_CHECKING:
    from pyslicer.protocol import IdentityRequest

log = logging.getLogger(__name__)

FORMAT = 1  # of a template directory; a change makes every key new
BOOT_TIMEOUT = 300.0
BUSYBOX = "/usr/local/sbin/busybox"
RETRY_SECONDS = 60.0  # after a failed build, before the next create tries again


@dataclass(frozen=True)
class Template:
    group: str
    key: str
    path: Path

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    @property
    def memory(self) -> Path:
        return self.path / "memory.ram"

    @property
    def state(self) -> Path:
        return self.path / "state.vmstate"

    @property
    def restorable(self) -> bool:
        return self.memory.exists() and self.state.exists()


def _stat_key(path: Path | str) -> list[int]:
    try:
        info = os.stat(path)
    except OSError:
        return []
    return [info.st_size, info.st_mtime_ns]


class Templates:
    """The fleet's templates. ``lease``/``release`` give a template VM its place on its group's network."""

    def __init__(
        self,
        root: Path,
        hypervisor: Hypervisor,
        image: GuestImage,
        kernel: Path,
        run_root: Path,
        base: Callable[[], Awaitable[Path]],
        lease: Callable[[HostGroup, str], Awaitable[Lease]],
        release: Callable[[HostGroup, str], Awaitable[None]],
        disks_in_use: Callable[[], set[str]],
    ) -> None:
        self.root = root
        self.hypervisor = hypervisor
        self.image = image
        self.kernel = kernel
        self.run_root = run_root
        self._base = base
        self._lease = lease
        self._release = release
        self._disks_in_use = disks_in_use
        self._builds: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, float] = {}
        self._groups_seen: dict[str, HostGroup] = {}

    def key(self, group: HostGroup) -> str:
        config = group.config
        binary = getattr(self.hypervisor, "binary", "")
        parts = {
            "format": FORMAT,
            "image": self.image.manifest.get("outputs"),
            "kernel": [str(self.kernel), *_stat_key(self.kernel)],
            "shape": [config.vcpu, config.ram_bytes, config.storage_size or 0],
            "vmm": [self.hypervisor.name, self.hypervisor.accel, str(binary), *_stat_key(binary)],
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def current(self, group: HostGroup) -> Template:
        key = self.key(group)
        return Template(group.name, key, self.root / group.name / key)

    def ready(self, group: HostGroup) -> Template | None:
        """The group's template when it is ready; else None, and (unless a build runs or failed lately) one is
        started in the background. Raises nothing."""
        template = self.current(group)
        if template.restorable:
            return template
        building = self._builds.get(group.name)
        failed = self._failed_at.get(group.name)
        if (building is None or building.done()) and (failed is None or time.monotonic() - failed > RETRY_SECONDS):
            self._builds[group.name] = asyncio.get_running_loop().create_task(
                self._build(group, template), name=f"template-{group.name}"
            )
        return None

    def disk_usage(self) -> int:
        """Bytes the templates take on disk (their RAM files are sparse: what the guests touched). Raises nothing."""
        return _disk_usage(self.root.glob("*/*/*"))

    def discard(self, template: Template) -> None:
        """A template whose state could not be loaded: the next create builds it again."""
        log.warning("%s: its template %s cannot be restored; it is made again", template.group, template.key)
        for path in (template.state, template.memory):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    async def close(self) -> None:
        """Stop the builds under way (their VMs end, their files go)."""
        for task in self._builds.values():
            task.cancel()
        for task in self._builds.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._builds.clear()

    def collect(self, groups: Iterable[HostGroup]) -> None:
        """Remove what no create and no node needs: templates that are not current lose their RAM and state,
        and the rest once no node's disk is layered on theirs. Raises nothing."""
        current = {self.current(group).path for group in groups}
        disks_in_use = self._disks_in_use()
        if not self.root.is_dir():
            return
        for group_dir in self.root.iterdir():
            for path in group_dir.iterdir() if group_dir.is_dir() else ():
                if path in current or (path.name.startswith(".building-") and group_dir.name in self._builds):
                    continue
                if str(path) in disks_in_use:
                    for stale in (path / "memory.ram", path / "state.vmstate"):
                        if stale.exists():
                            log.info("%s: template %s is not current; removing its memory", group_dir.name, path.name)
                            stale.unlink()
                    continue
                log.info("%s: removing template %s: nothing uses it", group_dir.name, path.name)
                shutil.rmtree(path, ignore_errors=True)

    # -- building -------------------------------------------------------------------------------
    async def _build(self, group: HostGroup, template: Template) -> None:
        staging = template.path.with_name(f".building-{template.key}")
        started = time.monotonic()
        try:
            await self._make(group, template, staging)
        except asyncio.CancelledError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except (SlicerError, OSError) as exc:
            log.error("%s: cannot make its fast-create template: %s", group.name, exc)
            self._failed_at[group.name] = time.monotonic()
            shutil.rmtree(staging, ignore_errors=True)
            return
        self._failed_at.pop(group.name, None)
        self._groups_seen[group.name] = group
        self.collect(self._groups_seen.values())  # an earlier template of the group may go now
        log.info("%s: fast-create template %s ready in %.1fs", group.name, template.key, time.monotonic() - started)

    async def _make(self, group: HostGroup, template: Template, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(template.path, ignore_errors=True)  # (an incomplete one: its RAM or state is missing)
        staging.mkdir(parents=True)
        config = group.config
        name = f"{group.name}-template"
        await create_overlay(await self._base(), staging / "disk.qcow2", config.storage_size or None)
        lease = await self._lease(group, name)
        run_dir = self.run_root / f"~template-{group.name}"
        shutil.rmtree(run_dir, ignore_errors=True)
        vm: VMProcess | None = None
        link: AgentLink | None = None
        try:
            spec = VMSpec(
                name=name,
                vcpus=config.vcpu,
                ram_bytes=config.ram_bytes,
                kernel=self.kernel,
                initrd=self.image.initrd,
                disk=staging / "disk.qcow2",
                run_dir=run_dir,
                console_log=staging / "console.log",
                # No address: eth0 stays down until a node restored from it is given its own.
                kernel_args={"slicer.hostname": name},
                nic=Nic(tap=lease.tap, mac=lease.mac, netns=lease.netns),
                memory=GuestMemory(staging / "memory.ram", shared=True),
            )
            vm = await self.hypervisor.launch(spec)
            link = AgentLink(spec.agent_socket, name)
            link.start()
            await link.wait_ready(BOOT_TIMEOUT)
            # One exec and one identity (its own), so what they need is imported in the snapshot already. The
            # exec waits for the boot's background resize2fs: every node restored mid-resize would redo its rest.
            wait_resize = f"while {BUSYBOX} pidof resize2fs >/dev/null; do sleep 0.1; done"
            warm = link.open({"op": Op.EXEC, "cmd": BUSYBOX, "args": ["sh", "-c", wait_resize]})
            async with asyncio.timeout(BOOT_TIMEOUT):
                async for _ in warm:
                    pass
            identity: IdentityRequest = {
                "op": Op.IDENTITY,
                "hostname": name,
                "machine_id": secrets.token_hex(16),
                "mac": lease.mac,
                "ip": "",
                "gateway": "",
                "seed": secrets.token_hex(64),
            }
            answer = await link.call(identity, timeout=60)
            if answer.get("type") != "done":
                raise AgentError(f"{name}: the agent cannot take an identity: {answer.get('error')}")
            await link.close()
            link = None
            await vm.save_state(staging / "state.vmstate")
            await vm.kill()
            vm = None
            await asyncio.to_thread(_fsync, staging / "memory.ram")
            os.replace(staging, template.path)
        finally:
            if link is not None:
                await link.close()
            if vm is not None:
                await vm.kill()
            shutil.rmtree(run_dir, ignore_errors=True)
            await self._release(group, name)


def _disk_usage(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_blocks * 512
    return total


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
