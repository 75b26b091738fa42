from pathlib import Path

import pytest

from pyslicer.daemon.console import tail_lines


@pytest.mark.parametrize("lines", [0, 1, 2, 5, 50])
@pytest.mark.parametrize("block", [1, 3, 7, 4096])
def test_tail_matches_the_naive_answer(tmp_path: Path, lines: int, block: int) -> None:
    path = tmp_path / "console.log"
    content = b"".join(f"line {i}\n".encode() for i in range(20)) + b"partial"
    path.write_bytes(content)
    expected = content if lines == 0 else b"".join(content.splitlines(keepends=True)[-lines:])
    assert tail_lines(path, lines, block=block) == expected.decode()


def test_long_lines_are_capped_and_fast(tmp_path: Path) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(b"a" * 5_000_000)
    assert tail_lines(path, 1, limit=1000) == "a" * 1000
    assert len(tail_lines(path, 0, limit=4096)) == 4096


def test_missing_file_is_empty(tmp_path: Path) -> None:
    assert tail_lines(tmp_path / "nothing", 10) == ""
