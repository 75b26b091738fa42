"""QEMU microvm, controlled over QMP."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
from pathlib import Path

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from pyslicer.errors import HypervisorError
from pyslicer.vmm.accel import choose_accel, host_tsc_khz
from pyslicer.vmm.base import Accel, BlockStats, VMSpec

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A daemon killed with SIGKILL must not leave its guests running unowned.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def build_command(binary: str, spec: VMSpec, accel: Accel) -> list[str]:
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
        prefix = [shutil.which("ip") or "ip", "netns", "exec", spec.nic.netns]
        nic = [
            "-netdev", f"tap,id=net0,ifname={spec.nic.tap},script=no,downscript=no",
            "-device", f"virtio-net-device,netdev=net0,mac={spec.nic.mac}",
        ]  # fmt: skip
    return [
        *prefix,
        binary,
        "-name", spec.name,
        "-M", "microvm",
        "-accel", "kvm" if accel == "kvm" else "tcg",
        "-cpu", "host" if accel == "kvm" else "max",
        "-m", str(max(1, spec.ram_bytes // MIB)),
        "-smp", str(spec.vcpus),
        "-nodefaults", "-no-user-config", "-no-reboot", "-nographic",
        # append=on: the daemon trims a log that grows too large, and QEMU then keeps writing at its end
        "-chardev", f"file,id=console0,path={spec.console_log},append=on",
        "-serial", "chardev:console0",
        "-kernel", str(spec.kernel),
        "-initrd", str(spec.initrd),
        "-append", append,
        "-drive", f"id=root,file={spec.disk},format=qcow2,if=none,discard=unmap",
        "-device", "virtio-blk-device,drive=root",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=agent0,path={spec.agent_socket},server=on,wait=off",
        "-device", "virtserialport,chardev=agent0,name=agent",
        "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
        *nic,
    ]  # fmt: skip


class QemuVM:
    def __init__(self, spec: VMSpec, process: asyncio.subprocess.Process, qmp: QMPClient) -> None:
        self.spec = spec
        self.pid = process.pid
        self._process = process
        self._qmp = qmp

    async def _execute(self, command: str) -> None:
        try:
            await self._qmp.execute(command)
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

    async def wait(self) -> int:
        """The QEMU process's exit status, once it has exited."""
        return await self._process.wait()

    async def kill(self) -> None:
        """SIGKILL QEMU and reap it; safe to call more than once."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._qmp.disconnect(), 1)
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        await self._process.wait()


def qemu_hypervisor(accel: str) -> QemuHypervisor:
    """QEMU with the accelerator ``accel`` (auto, kvm, tcg) resolves to here. Raises ConfigError for an
    accelerator this host cannot use, HypervisorError when QEMU is missing."""
    chosen, reason = choose_accel(accel)
    return QemuHypervisor(chosen, accel_reason=reason)


class QemuHypervisor:
    name = "qemu"

    def __init__(self, accel: Accel, *, accel_reason: str = "", binary: str = "qemu-system-x86_64") -> None:
        """Raises HypervisorError when QEMU is not installed."""
        self.accel: Accel = accel
        self.accel_reason = accel_reason or accel
        found = shutil.which(binary)
        if found is None:
            raise HypervisorError(f"{binary} not found: install the qemu-system-x86 package")
        self.binary = found

    async def launch(self, spec: VMSpec) -> QemuVM:
        """Start QEMU for ``spec`` and connect to its QMP socket. Raises HypervisorError when QEMU cannot
        be started or exits before QMP answers (its log's tail is in the message)."""
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        command = build_command(self.binary, spec, self.accel)
        log.debug("%s: %s", spec.name, " ".join(command))
        qemu_log = (spec.run_dir / "qemu.log").open("wb")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=qemu_log,
                stderr=qemu_log,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise HypervisorError(f"{spec.name}: cannot start QEMU: {exc}") from exc
        finally:
            qemu_log.close()
        qmp = QMPClient(spec.name)
        try:
            await self._connect_qmp(qmp, spec.run_dir / "qmp.sock", process)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        return QemuVM(spec, process, qmp)

    async def _connect_qmp(self, qmp: QMPClient, path: Path, process: asyncio.subprocess.Process) -> None:
        for _ in range(1000):
            if process.returncode is not None:
                break
            if path.exists():
                try:
                    await qmp.connect(str(path))
                    return
                except (QMPError, OSError):
                    pass
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        tail = _tail(path.parent / "qemu.log")
        raise HypervisorError(f"QEMU did not start (exit {process.returncode}): {tail}")


def _tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_bytes()[-size:].decode(errors="replace").strip()
    except OSError:
        return "no log"
