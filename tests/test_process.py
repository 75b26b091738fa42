"""VMM processes told apart by PID and start time, watched through a pidfd."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from pyslicer.vmm.process import ProcessHandle, ProcessIdentity, start_time


def test_identity_of_a_live_process_and_of_none() -> None:
    me = ProcessIdentity.of(os.getpid())
    assert me is not None and me.is_alive() and me.start_time == start_time(os.getpid())
    assert ProcessIdentity(os.getpid(), me.start_time + 1).is_alive() is False, "another start time: another process"
    assert ProcessIdentity.of(2**22 + 12345) is None


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # until it has exited, leaving it unreaped
    assert ProcessIdentity.of(child.pid) is None, "a zombie has no identity"
    child.wait()


def test_a_handle_sees_the_exit_and_signals_only_its_process() -> None:
    async def run() -> None:
        child = subprocess.Popen(["sleep", "60"])
        identity = ProcessIdentity.of(child.pid)
        assert identity is not None
        handle = ProcessHandle.open(identity)
        handle.send_signal(signal.SIGKILL)
        await asyncio.wait_for(handle.wait(), 10)
        assert handle.exited
        handle.send_signal(signal.SIGKILL)  # nothing happens
        handle.close()
        child.wait()
        with pytest.raises(ProcessLookupError):
            ProcessHandle.open(identity)

    asyncio.run(run())
