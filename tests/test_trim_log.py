import os
from pathlib import Path

from pyslicer.daemon.console import trim_log


def test_a_log_over_the_limit_keeps_its_newest_half(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"".join(b"%07d\n" % i for i in range(2000)))  # 16000 bytes
    trim_log(path, 4000)
    text = path.read_bytes()
    assert text.startswith(b"[... earlier console output trimmed")
    assert text.endswith(b"0001999\n") and len(text) < 2100
    with path.open("ab") as appender:  # what QEMU does: O_APPEND writes land at the new end
        appender.write(b"after\n")
    assert path.read_bytes().endswith(b"0001999\nafter\n")


def test_small_and_missing_logs_are_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"short\n")
    trim_log(path, 4000)
    assert path.read_bytes() == b"short\n"
    trim_log(tmp_path / "absent.log", 10)
    assert not os.path.exists(tmp_path / "absent.log")
