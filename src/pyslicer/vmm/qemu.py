"""QEMU microvm, controlled over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from pyslicer.errors import HypervisorError, SnapshotError
from pyslicer.vmm.accel import choose_accel, host_tsc_khz
from pyslicer.vmm.base import Accel, BlockStats, GuestMemory, MemoryTuning, VMSpec
from pyslicer.vmm.process import ProcessHandle, ProcessIdentity, become_subreaper

log = logging.getLogger(__name__)

# TCG emulates ``rep movsb``/``rep stosb`` a byte at a time, and with ERMS advertised the guest's kernel and glibc
# use them for every copy and page clear: measured in a guest, 64 KiB copies ran 8x faster without it, a
# socketpair 3x, /dev/zero to /dev/null 6x (0.17 -> 1.1 GB/s). So the TCG guest's CPU does not advertise it.
TCG_CPU = "max,erms=off"
MIB = 1024 * 1024
LAUNCH_TIMEOUT = 60.0  # until QEMU has set the machine up and daemonized
QMP_CONNECT_TIMEOUT = 10.0
MIGRATION_TIMEOUT = 120.0
MIGRATION_POLL = 0.005
# QEMU's default migration cap (32 MiB/s) makes a 512 MiB guest's save take 0.53 s instead of 0.11 s (measured).
MIGRATION_BANDWIDTH = 10 * 1024 * 1024 * 1024
# Every RAM block is named after its backend, so a state saved from a VM on any backend loads into any other.
RAM_ID = "ram0"
# Always on, both ways (the capability changes the stream's format): RAM in a shared file is left out of the
# state, as it stays in its file; anonymous or privately mapped RAM is saved as usual.
MIGRATION_CAPABILITIES = [{"capability": "x-ignore-shared", "state": True}]


def memory_backend(spec: VMSpec) -> str:
    size = f"size={max(1, spec.ram_bytes // MIB)}M"
    memory: GuestMemory | None = spec.memory
    if memory is None:
        return f"memory-backend-ram,id={RAM_ID},{size}"
    share = "on" if memory.shared else "off"
    return f"memory-backend-file,id={RAM_ID},{size},mem-path={memory.path.absolute()},share={share}"


# Under memory pressure the OOM killer takes a VM before the daemon (serve.py lowers the daemon's, which a
# QEMU it forks would inherit).
QEMU_OOM_SCORE_ADJ = 300


def accel_args(accel: Accel, memory: MemoryTuning) -> list[str]:
    """``-accel``: under TCG with the translation cache sized on purpose (QEMU's default, 1 GiB, is filled by
    a long-lived guest and stays resident)."""
    if accel == "kvm":
        return ["-accel", "kvm"]
    return ["-accel", f"tcg,tb-size={memory.tcg_tb_size_mib}"]


def balloon_args(memory: MemoryTuning) -> list[str]:
    """The balloon, for free page reporting: the guest reports pages it has freed (2 MiB blocks, after ~2 s)
    and QEMU discards them, so the host gets back what the guest no longer uses. deflate-on-oom lets the
    guest take balloon pages back before its own OOM killer runs."""
    if not memory.free_page_reporting:
        return []
    return ["-device", "virtio-balloon-device,free-page-reporting=on,deflate-on-oom=on"]


# Allocations are not zeroed twice (Debian's kernel zeroes every page it allocates): under TCG zeroing is
# slow, and a zeroed page is a touched one. Pages handed to user space are zeroed regardless.
MEMORY_KERNEL_ARGS = {"init_on_alloc": "0"}


def build_command(binary: str, spec: VMSpec, accel: Accel, memory: MemoryTuning | None = None) -> list[str]:
    memory = memory or MemoryTuning()
    kernel_args = {
        "console": "ttyS0",
        "reboot": "t",
        "panic": "-1",
        "root": "/dev/vda",
        "rw": "",
        "quiet": "",
        # Skip boot work a micro-VM has no use for (crypto self-tests, legacy keyboard and UART probing,
        # AppArmor without profiles): measured ~0.8 s faster to a ready agent under TCG.
        "cryptomgr.notests": "",
        "no_timer_check": "",
        "i8042.noaux": "",
        "i8042.nopnp": "",
        "i8042.nokbd": "",
        "8250.nr_uarts": "1",
        "random.trust_cpu": "on",
        "apparmor": "0",
        "ima_appraise": "off",
        "integrity_audit": "0",
        **MEMORY_KERNEL_ARGS,
        # TCG: without the TSC rate about half the boots hang calibrating it; and with 2+ vCPUs the kernel's
        # TSC sync check fails under emulation, falling back to jiffies, which lose ~7-100 ms/s.
        **({"tsc_early_khz": str(host_tsc_khz()), "tsc": "reliable"} if accel == "tcg" else {}),
        **spec.kernel_args,
    }
    append = " ".join(f"{key}={value}" if value else key for key, value in kernel_args.items())
    run = spec.run_dir
    prefix: list[str] = []
    nic: list[str] = []
    if spec.nic is not None:
        if spec.nic.netns:  # (empty: the tap is in QEMU's own namespace)
            prefix = [shutil.which("ip") or "ip", "netns", "exec", spec.nic.netns]
        nic = [
            "-netdev", f"tap,id=net0,ifname={spec.nic.tap},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={spec.nic.mac}",
        ]  # fmt: skip
    return [
        *prefix,
        binary,
        "-name", spec.name,
        "-M", f"microvm,memory-backend={RAM_ID}",
        "-object", memory_backend(spec),
        *accel_args(accel, memory),
        "-cpu", "host" if accel == "kvm" else TCG_CPU,
        "-m", str(max(1, spec.ram_bytes // MIB)),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
        # append=on: the daemon trims a log that grows too large, and QEMU then keeps writing at its end
        "-chardev", f"file,id=console0,path={spec.console_log},append=on",
        "-serial", "chardev:console0",
        "-kernel", str(spec.kernel.absolute()),  # a daemonized QEMU works in /
        "-initrd", str(spec.initrd.absolute()),
        "-append", append,
        "-drive", f"id=root,file={spec.disk.absolute()},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent0,path={spec.agent_socket},server=on,wait=off",
        "-device", "virtserialport,chardev=agent0,name=agent",
        "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
        *balloon_args(memory),
        *nic,
        # Restored: wait for the state over QMP (an fd the daemon opened), then stay stopped until `cont`.
        *(["-incoming", "defer", "-S"] if spec.incoming is not None else []),
    ]  # fmt: skip


class QemuVM:
    """A running QEMU, controlled over QMP and watched through a pidfd (it is not the daemon's child)."""

    def __init__(self, spec: VMSpec, process: ProcessHandle, qmp: QMPClient) -> None:
        self.spec = spec
        self.identity = process.identity
        self.pid = process.pid
        self._process = process
        self._qmp = qmp

    async def _execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        try:
            return await self._qmp.execute(command, arguments)
        except (QMPError, OSError) as exc:
            raise HypervisorError(f"{self.spec.name}: QMP {command} failed: {exc}") from exc

    async def pause(self) -> None:
        """Raises HypervisorError when QMP ``stop`` fails."""
        await self._execute("stop")

    async def resume(self) -> None:
        """Raises HypervisorError when QMP ``cont`` fails."""
        await self._execute("cont")

    async def block_stats(self) -> BlockStats:
        """QMP ``query-blockstats`` summed over the VM's drives. Raises HypervisorError when QMP fails."""
        try:
            devices = await self._qmp.execute("query-blockstats")
        except (QMPError, OSError) as exc:
            raise HypervisorError(f"{self.spec.name}: QMP query-blockstats failed: {exc}") from exc
        totals = dict.fromkeys(("rd_bytes", "wr_bytes", "rd_operations", "wr_operations"), 0)
        for device in devices if isinstance(devices, list) else ():
            stats = device.get("stats") if isinstance(device, dict) else None
            if isinstance(stats, dict):
                for key in totals:
                    value = stats.get(key)
                    if isinstance(value, int) and value > 0:
                        totals[key] += value
        return BlockStats(
            read_bytes=totals["rd_bytes"],
            write_bytes=totals["wr_bytes"],
            read_operations=totals["rd_operations"],
            write_operations=totals["wr_operations"],
        )

    async def save_state(self, path: Path) -> None:
        """Migrate the VM into ``path`` over an fd passed to QEMU (7.2 has no ``file:`` URI; ``exec:cat > FILE``
        leaves a ``cat`` still writing when QEMU reports completion), then fsync and rename it into place.
        Raises SnapshotError when the migration fails (QEMU resumes the guest then) or QEMU dies meanwhile."""
        staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SnapshotError(f"{self.spec.name}: cannot create {path.name}: {exc.strerror}") from None
        try:
            try:
                await self._configure_migration()
                await self._execute("migrate-set-parameters", {"max-bandwidth": MIGRATION_BANDWIDTH})
                await self._pass_fd(fd, "state")
                await self._execute("migrate", {"uri": "fd:state"})
                await self._wait_migration("save")
                started = time.monotonic()
                await asyncio.to_thread(os.fsync, fd)
                log.debug("%s: state saved, fsync %.3fs", self.spec.name, time.monotonic() - started)
                os.replace(staging, path)
            except OSError as exc:  # (fsync, replace)
                raise SnapshotError(f"{self.spec.name}: cannot write {path.name}: {exc.strerror}") from None
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()
            with contextlib.suppress(Exception):  # QEMU restarts a guest whose migration failed; make sure
                if await asyncio.wait_for(self.paused(), 2):
                    await asyncio.wait_for(self.resume(), 2)
            raise

    async def load_state(self, path: Path) -> None:
        """Load a saved state into a QEMU started with ``-incoming defer`` and run the guest. Raises
        SnapshotError when the file is missing or QEMU cannot load it (QEMU exits then)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise SnapshotError(f"{self.spec.name}: saved state {path.name}: {exc.strerror}") from None
        try:
            await self._configure_migration()
            await self._pass_fd(fd, "state")
            await self._execute("migrate-incoming", {"uri": "fd:state"})
            await self._wait_migration("restore")
        finally:
            os.close(fd)
        await self._execute("cont")

    async def _configure_migration(self) -> None:
        await self._execute("migrate-set-capabilities", {"capabilities": MIGRATION_CAPABILITIES})

    async def _pass_fd(self, fd: int, name: str) -> None:
        # Not QMPClient.send_fd_scm: it reaches into the transport's socket object, which uvloop's lacks.
        try:
            transport_socket = self._qmp._writer.transport.get_extra_info("socket") if self._qmp._writer else None
            if transport_socket is None:
                raise OSError("QMP is not connected")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(transport_socket.fileno())) as qmp:
                socket.send_fds(qmp, [b" "], [fd])  # QMP skips the blank
        except OSError as exc:
            raise SnapshotError(f"{self.spec.name}: cannot pass the state file to QEMU: {exc}") from None
        await self._execute("getfd", {"fdname": name})

    async def _wait_migration(self, what: str) -> None:
        deadline = time.monotonic() + MIGRATION_TIMEOUT
        while True:
            try:
                status = await self._qmp.execute("query-migrate")
            except (QMPError, OSError, EOFError) as exc:
                # A restore that fails ends QEMU; a daemonized QEMU's stderr (its reason) goes to /dev/null.
                raise SnapshotError(
                    f"{self.spec.name}: {what} failed: QEMU ended ({exc or 'disconnected'}); a saved state it cannot "
                    "load is damaged or was saved from a VM with other devices"
                ) from None
            state = status.get("status") if isinstance(status, dict) else None
            if state == "completed":
                return
            if state in ("failed", "cancelled"):
                reason = status.get("error-desc", state) if isinstance(status, dict) else state
                raise SnapshotError(f"{self.spec.name}: {what} failed: {reason}")
            if time.monotonic() > deadline:
                with contextlib.suppress(QMPError, OSError):
                    await self._qmp.execute("migrate_cancel")
                raise SnapshotError(f"{self.spec.name}: {what} did not finish within {MIGRATION_TIMEOUT:g}s")
            await asyncio.sleep(MIGRATION_POLL)

    async def paused(self) -> bool:
        """Whether the vCPUs are stopped. Raises HypervisorError when QMP does not answer."""
        status = await self._execute("query-status")
        return isinstance(status, dict) and status.get("running") is False

    async def wait(self) -> None:
        """Return once the QEMU process has exited."""
        await self._process.wait()

    async def kill(self) -> None:
        """SIGKILL QEMU and wait until it has gone; safe to call more than once."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._qmp.disconnect(), 1)
        self._process.send_signal(signal.SIGKILL)
        await self._process.wait()
        self._process.close()

    async def detach(self) -> None:
        """Let go of QEMU, leaving it running, for a later daemon to adopt."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._qmp.disconnect(), 1)
        self._process.close()


def qemu_hypervisor(accel: str, memory: MemoryTuning | None = None) -> QemuHypervisor:
    """QEMU with the accelerator ``accel`` (auto, kvm, tcg) resolves to here. Raises ConfigError for an
    accelerator this host cannot use, HypervisorError when QEMU is missing."""
    chosen, reason = choose_accel(accel)
    return QemuHypervisor(chosen, accel_reason=reason, memory=memory)


class QemuHypervisor:
    name = "qemu"

    def __init__(
        self,
        accel: Accel,
        *,
        accel_reason: str = "",
        binary: str = "qemu-system-x86_64",
        memory: MemoryTuning | None = None,
    ) -> None:
        """Raises HypervisorError when QEMU is not installed."""
        self.accel: Accel = accel
        self.accel_reason = accel_reason or accel
        self.memory = memory or MemoryTuning()
        found = shutil.which(binary)
        if found is None:
            raise HypervisorError(f"{binary} not found: install the qemu-system-x86 package")
        self.binary = found
        become_subreaper()

    async def launch(self, spec: VMSpec) -> QemuVM:
        """Start QEMU for ``spec`` as a daemon of its own (it outlives this process) and connect to its QMP
        socket. Raises HypervisorError when QEMU cannot be started (its log's tail is in the message)."""
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        pidfile = spec.run_dir / "qemu.pid"
        pidfile.unlink(missing_ok=True)
        command = [*build_command(self.binary, spec, self.accel, self.memory), "-daemonize", "-pidfile", str(pidfile)]
        log.debug("%s: %s", spec.name, " ".join(command))
        qemu_log = (spec.run_dir / "qemu.log").open("wb")
        try:
            launcher = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=qemu_log, stderr=qemu_log, start_new_session=True
            )
        except OSError as exc:
            raise HypervisorError(f"{spec.name}: cannot start QEMU: {exc}") from exc
        finally:
            qemu_log.close()
        # The launching QEMU exits once the daemonized one has set the machine up (or failed to).
        try:
            status = await asyncio.wait_for(launcher.wait(), LAUNCH_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                launcher.kill()
            await launcher.wait()
            raise HypervisorError(f"{spec.name}: QEMU did not start within {LAUNCH_TIMEOUT:g}s") from None
        identity = _read_pidfile(pidfile)
        if status != 0 or identity is None:
            tail = _tail(spec.run_dir / "qemu.log")
            raise HypervisorError(f"{spec.name}: QEMU did not start (exit {status}): {tail}")
        try:
            process = ProcessHandle.open(identity)
        except ProcessLookupError:
            raise HypervisorError(f"{spec.name}: QEMU exited at once: {_tail(spec.run_dir / 'qemu.log')}") from None
        _set_oom_score_adj(identity.pid, QEMU_OOM_SCORE_ADJ)
        vm = await self._control(spec, process)
        if spec.incoming is not None:
            try:
                await vm.load_state(spec.incoming)
            except BaseException:
                await vm.kill()
                raise
        return vm

    async def adopt(self, spec: VMSpec, identity: ProcessIdentity) -> QemuVM:
        """Take over a QEMU that an earlier daemon started for ``spec``. Raises HypervisorError when that
        process is gone, is not the VM's QEMU (a PID reused) or does not answer on its QMP socket."""
        if not _is_qemu_of(identity, spec.run_dir):
            raise HypervisorError(f"{spec.name}: process {identity.pid} is not its QEMU (gone or another process)")
        try:
            process = ProcessHandle.open(identity)
        except ProcessLookupError:
            raise HypervisorError(f"{spec.name}: its QEMU (pid {identity.pid}) has exited") from None
        return await self._control(spec, process)

    async def reclaim(self, run_dir: Path) -> None:
        """End a QEMU that an earlier daemon started in ``run_dir`` and never recorded (it died in between)."""
        identity = _read_pidfile(run_dir / "qemu.pid")
        if identity is None or not _is_qemu_of(identity, run_dir):
            return
        with contextlib.suppress(ProcessLookupError):
            process = ProcessHandle.open(identity)
            log.warning("%s: ending a QEMU no record owns (pid %d)", run_dir.name, identity.pid)
            process.send_signal(signal.SIGKILL)
            await process.wait()
            process.close()

    async def _control(self, spec: VMSpec, process: ProcessHandle) -> QemuVM:
        qmp = QMPClient(spec.name)
        try:
            async with asyncio.timeout(QMP_CONNECT_TIMEOUT):
                await qmp.connect(str(spec.run_dir / "qmp.sock"))
        except (QMPError, OSError, TimeoutError) as exc:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            process.close()
            raise HypervisorError(f"{spec.name}: QEMU's QMP socket does not answer: {exc or 'timed out'}") from None
        return QemuVM(spec, process, qmp)


def _set_oom_score_adj(pid: int, value: int) -> None:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as file:
            file.write(str(value))
    except OSError as exc:  # (gone already: its QMP connect says so next)
        log.debug("pid %d: cannot set oom_score_adj: %s", pid, exc)


def _read_pidfile(path: Path) -> ProcessIdentity | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return ProcessIdentity.of(pid)


def _is_qemu_of(identity: ProcessIdentity, run_dir: Path) -> bool:
    qmp_socket = str(run_dir / "qmp.sock")
    return any(qmp_socket in arg for arg in identity.command_line())


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return "no log"
