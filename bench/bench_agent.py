"""The agent's start-up, old against new, side by side in one run: process start -> READY.

Also: start -> the first command ended (after READY the bench sends what the daemon sends: HELLO, CLOCK to
an agent that knows it, the userdata hand-over, then at once an exec of `true`), so work moved from before
READY to after it shows (the worst case for it: the daemon's first exec comes an HTTP round trip later).

Both agents are started as the image starts them (`python3 -S -P -c 'from pyslicer.agent.server import main;
main()'`), over a socketpair (`SLICER_AGENT_FD`), in alternating rounds (who goes first alternates too), so the
machine's noise hits both. The old agent is a checkout of an earlier commit, e.g.

    git worktree add --detach /tmp/base a0730ae
    .venv/bin/python bench/bench_agent.py --old /tmp/base/src [--rounds 200]

Byte code is cached under a temporary PYTHONPYCACHEPREFIX (warm after the first round, as the image's
compiled agent is), so neither source tree is written to. Also shown, from `-X importtime`: how many modules
the agent's import pulls in and how long importing it takes. On the host CPU, the interpreter's own start
dominates; with --emulate (qemu-x86_64 from Debian's qemu-user, the TCG that runs the guests, in user mode)
Python runs at about guest speed. Prints a markdown table; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pyslicer.protocol import FrameDecoder, FrameType, clock_payload, decode_json, encode, encode_json

NEW_SRC = Path(__file__).resolve().parents[1] / "src"
AGENT = "from pyslicer.agent.server import main; main()"
IMPORT = "import pyslicer.agent.server"


def guest_like_python() -> str:
    """The system python3 (Debian's, as in the guest) when there is one."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def agent_env(src: Path, pycache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return {**env, "PYTHONPATH": str(src), "PYTHONPYCACHEPREFIX": str(pycache), **extra}


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (the scheduler's own count, in ns: unlike wall time, it does
    not count the time others held the CPU)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9


class Run:
    """One agent start: seconds from just before the spawn to READY and to the first command's end, wall
    clock and the agent's CPU time."""

    def __init__(self) -> None:
        self.ready = self.ready_cpu = self.exec_done = self.exec_cpu = 0.0


def start_agent(interpreter: list[str], src: Path, pycache: Path) -> Run:
    """Start an agent; after READY do what the daemon does: HELLO, CLOCK for an agent that knows it
    (version 2), the userdata hand-over (none here), then one exec of ``true``."""
    host_end, agent_end = socket.socketpair()
    env = agent_env(src, pycache, SLICER_AGENT_FD=str(agent_end.fileno()))
    host_end.settimeout(30)
    decoder = FrameDecoder()
    started = time.perf_counter()
    proc = subprocess.Popen([*interpreter, "-S", "-P", "-c", AGENT], env=env, pass_fds=[agent_end.fileno()])
    run = Run()
    try:
        agent_end.close()
        while True:
            data = host_end.recv(65536)
            if not data:
                raise RuntimeError(f"the agent from {src} exited early ({proc.wait()})")
            for frame in decoder.feed(data):
                if not run.ready:
                    run.ready = time.perf_counter() - started
                    run.ready_cpu = cpu_seconds(proc.pid)
                    if frame.type != FrameType.READY:
                        raise RuntimeError(f"the agent from {src} said {frame!r} first")
                    version = decode_json(frame).get("version")
                    out = encode_json(FrameType.HELLO, 0, {"version": version})
                    if isinstance(version, int) and version >= 2:
                        out += encode(FrameType.CLOCK, 0, clock_payload(time.time_ns()))
                    out += encode_json(FrameType.OPEN, 2, {"op": "userdata", "script": ""})
                    host_end.sendall(out + encode_json(FrameType.OPEN, 1, {"op": "exec", "cmd": "true"}))
                elif frame.type == FrameType.CLOSE and frame.stream == 1:
                    run.exec_done = time.perf_counter() - started
                    run.exec_cpu = cpu_seconds(proc.pid)
                    return run
    finally:
        proc.kill()
        proc.wait()
        host_end.close()


def bare_interpreter(interpreter: list[str], pycache: Path) -> float:
    started = time.perf_counter()
    subprocess.run([*interpreter, "-S", "-P", "-c", "pass"], env=agent_env(Path("/nonexistent"), pycache), check=True)
    return time.perf_counter() - started


def import_profile(interpreter: list[str], src: Path, pycache: Path) -> tuple[int, float, list[str]]:
    """(modules imported, seconds importing the agent, the top-level stdlib modules among them)."""
    result = subprocess.run(
        [*interpreter, "-S", "-P", "-X", "importtime", "-c", IMPORT],
        env=agent_env(src, pycache),
        capture_output=True,
        text=True,
        check=True,
    )
    modules: list[str] = []
    total = 0.0
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, _, rest = line.partition(":")
        _self_us, cumulative_us, name = (part.strip() for part in rest.split("|"))
        modules.append(name)
        if name == "pyslicer.agent.server":
            total = int(cumulative_us) / 1e6
    stdlib = sorted({m for m in modules if not m.startswith("pyslicer") and "." not in m})
    return len(modules), total, stdlib


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", type=Path, default=Path("/tmp/base/src"), help="the old tree's src/")
    parser.add_argument("--new", type=Path, default=NEW_SRC, help="the new tree's src/ (this checkout's)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--python", default=guest_like_python())
    parser.add_argument(
        "--emulate",
        action="store_true",
        help="run the interpreters under qemu-x86_64 (user-mode TCG, Debian's qemu-user): guest-like speed",
    )
    args = parser.parse_args()
    interpreter = [args.python]
    if args.emulate:
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            sys.exit("--emulate needs qemu-x86_64: apt-get install qemu-user")
        interpreter.insert(0, qemu)
    if not (args.old / "pyslicer" / "agent" / "server.py").is_file():
        sys.exit(f"{args.old} holds no pyslicer agent: check out the old commit there (see --help)")

    sides = {"old": args.old.resolve(), "new": args.new.resolve()}
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        caches = {name: Path(tmp) / name for name in sides}
        for name, src in sides.items():  # warm-up: byte code compiled and cached, files in the page cache
            start_agent(interpreter, src, caches[name])
        runs: dict[str, list[Run]] = {name: [] for name in sides}
        profiles: dict[str, list[tuple[int, float, list[str]]]] = {name: [] for name in sides}
        bare: list[float] = []
        order = list(sides)
        for round_number in range(args.rounds):
            for name in order:
                runs[name].append(start_agent(interpreter, sides[name], caches[name]))
            if round_number % 4 == 0:
                for name in order:
                    profiles[name].append(import_profile(interpreter, sides[name], caches[name]))
            order.reverse()
            bare.append(bare_interpreter(interpreter, Path(tmp) / "bare"))

    def quantile(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=10)[q - 1]

    rows: list[tuple[str, str, str, str]] = []
    for label, field, pick in (
        ("start -> READY, median (ms)", "ready", statistics.median),
        ("start -> READY, p10 (ms)", "ready", lambda v: quantile(v, 1)),
        ("start -> READY, p90 (ms)", "ready", lambda v: quantile(v, 9)),
        ("agent CPU time to READY, median (ms)", "ready_cpu", statistics.median),
        ("start -> first exec ended, median (ms)", "exec_done", statistics.median),
        ("start -> first exec ended, p10 (ms)", "exec_done", lambda v: quantile(v, 1)),
        ("agent CPU time to the first exec's end, median (ms)", "exec_cpu", statistics.median),
    ):
        old, new = (pick([getattr(run, field) for run in runs[name]]) for name in ("old", "new"))
        rows.append((label, ms(old), ms(new), f"{new / old:.2f}"))
    base = statistics.median(bare)
    import_old = statistics.median(p[1] for p in profiles["old"])
    import_new = statistics.median(p[1] for p in profiles["new"])
    rows.append(("import of the agent, median (ms)", ms(import_old), ms(import_new), f"{import_new / import_old:.2f}"))
    count_old, count_new = profiles["old"][0][0], profiles["new"][0][0]
    rows.append(("modules the agent imports", str(count_old), str(count_new), f"{count_new / count_old:.2f}"))

    where = "under qemu-x86_64 (user-mode TCG)" if args.emulate else "on the host CPU"
    command = " ".join(interpreter)
    print(f"agent start-up: {args.rounds} alternating rounds of `{command} -S -P -c ...`, {where}")
    print(f"(a bare `{command} -S -P -c pass`: {ms(base)} ms median)\n")
    print("| measure | old | new | new/old |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    old_mods, new_mods = set(profiles["old"][0][2]), set(profiles["new"][0][2])
    print(f"\nstdlib modules only the old agent imports: {', '.join(sorted(old_mods - new_mods)) or '-'}")
    print(f"stdlib modules only the new agent imports: {', '.join(sorted(new_mods - old_mods)) or '-'}")


if __name__ == "__main__":
    main()
