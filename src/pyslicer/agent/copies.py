"""copy_in and copy_out: files and trees between the host and the guest's disk, streamed under credit.

A binary copy runs on the loop: each DATA frame is written to a hidden temporary file beside the target (its
credit goes back once written), and EOF renames it into place; a file going out is read only as far as the
host's credit allows. A tar copy runs ``tarfile`` on a worker thread joined to the loop by a pipe (bytes in
flight bounded by the pipe and the credit window); a tree comes in to a hidden directory and is moved into
place once complete. A cancel, a bad archive or a full disk removes whatever was written aside: nothing ever
appears half-written under the target's name.
"""

from __future__ import annotations

import os
import sys

from pyslicer.agent.accounts import resolve_owner
from pyslicer.agent.copy_rules import (
    CopyFailure,
    check_space,
    expand_path,
    file_mode_text,
    is_contents_path,
    normalise_excludes,
    place_file,
    place_tree,
    source_name_of,
)
from pyslicer.agent.session import StreamSession
from pyslicer.protocol import (
    INITIAL_WINDOW,
    MAX_PAYLOAD,
    Channel,
    Event,
    FrameType,
    window_payload,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pyslicer.agent.accounts import Owner
    from pyslicer.agent.loop import Loop
    from pyslicer.protocol.messages import CopyDone, CopyError, CopySource

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = 1031


class _Cancelled(Exception):
    pass


class Worker:
    """Runs ``job`` on a thread; ``on_done(result, error)`` is called on the loop when it returns."""

    def __init__(
        self, loop: Loop, job: Callable[[], Any], on_done: Callable[[Any, BaseException | None], None]
    ) -> None:
        import threading

        self._loop = loop
        self._job = job
        self._on_done = on_done
        self._wake_r, self._wake_w = os.pipe()
        self._result: Any = None
        self._error: BaseException | None = None
        self._forgotten = False
        loop.add_reader(self._wake_r, self._woken)
        threading.Thread(target=self._run, name="slicer-copy", daemon=True).start()

    def _run(self) -> None:
        try:
            self._result = self._job()
        except BaseException as exc:  # reported on the loop
            self._error = exc
        finally:
            os.write(self._wake_w, b"x")
            os.close(self._wake_w)

    def _woken(self) -> None:
        self._loop.forget(self._wake_r)
        os.close(self._wake_r)
        if not self._forgotten:
            self._on_done(self._result, self._error)

    def forget(self) -> None:
        """The session is gone: the thread finishes on its own, and nobody is told."""
        self._forgotten = True


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # the default size works, with more wake-ups
    return read_end, write_end


class _PipeReader:
    """The worker's end of the input pipe, as a file for tarfile. At EOF it tells a finished upload from a
    cancelled one (``complete`` is set before the write end is closed)."""

    def __init__(self, fd: int, complete: Callable[[], bool]) -> None:
        self._file = open(fd, "rb", buffering=PIPE_SIZE, closefd=True)  # noqa: SIM115  # closed by close()
        self._complete = complete

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if (len(data) < size or not data) and not self._complete():
            raise _Cancelled
        return data

    def drain(self) -> None:
        while self.read(PIPE_SIZE):
            pass

    def close(self) -> None:
        self._file.close()


class _Session(StreamSession):
    """What both directions share: sending, finishing once, reporting failures."""

    def _finish(self, body: CopyDone | CopyError) -> None:
        if self._done or self._cancelled:
            return
        self._done = True
        self._cleanup(success=body["type"] == Event.DONE)
        self._send_event(body)
        self._on_finish(self)

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, CopyFailure):
            self._finish({"type": Event.ERROR, "error": exc.message, "code": exc.code})
        elif isinstance(exc, OSError):
            from pyslicer.agent.copy_tar import failure_of

            failure = failure_of(exc, self._target or str(self._request.get("path") or "the copy"))
            self._finish({"type": Event.ERROR, "error": failure.message, "code": failure.code})
        else:
            print(f"slicer-agent: copy on stream {self.stream}: {exc!r}", file=sys.stderr)
            self._finish({"type": Event.ERROR, "error": f"agent: {exc}", "code": "failed"})

    _target = ""  # where the copy goes (or comes from): what a failure names

    def _guard(self, step: Callable[[], None]) -> None:
        try:
            step()
        except Exception as exc:  # the host must always see an end to the stream
            if self._done or self._cancelled:
                print(f"slicer-agent: copy on stream {self.stream}: {exc!r}", file=sys.stderr)
                return
            self._fail(exc)

    def _cleanup(self, success: bool) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._guard(self._start)

    def _start(self) -> None:
        raise NotImplementedError

    def cancel(self) -> None:
        self._cancelled = True
        self._cleanup(success=False)

    def _owner(self) -> Owner:
        try:
            return resolve_owner(self._request.get("uid"), self._request.get("gid"))
        except ValueError as exc:
            raise CopyFailure("invalid_path", str(exc)) from None


# -- into the guest ------------------------------------------------------------------------------------


class CopyInSession(_Session):
    """OPEN ``CopyInRequest`` -> DATA/EOF on stdin from the host -> MESSAGE ``CopyDone`` or ``CopyError`` ->
    CLOSE. An error may come before the host has sent everything (no space, a bad path): the rest is dropped."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        from pyslicer.agent.copy_tar import Made

        self._made = Made()  # parent directories this copy created, removed again on failure
        self._dir_fd = -1  # binary: the target's directory
        self._temp = ""  # binary: the hidden file being filled, its name in that directory
        self._target = ""
        self._merge = False
        self._fd = -1  # binary: the temporary file
        self._size = 0
        self._tar = False
        self._pipe_w = -1  # tar: our end of the worker's input
        self._queue: list[bytes] = []
        self._offset = 0
        self._input_complete = False  # EOF came from the host
        self._input_delivered = False  # ... and every byte before it is in the pipe
        self._worker: Worker | None = None

    def _start(self) -> None:
        request = self._request
        owner = self._owner()
        path, as_directory = expand_path(request.get("path"), owner.home)
        cp_v1 = request.get("cp_v1") is True
        mode = request.get("mode")
        if mode == "binary":
            self._target = place_file(path, as_directory, cp_v1, request.get("source_name"), request.get("source_type"))
            check_space(os.path.dirname(self._target), request.get("unpacked_size"))
            self._open_file(owner)
        elif mode == "tar":
            copy_contents = request.get("copy_contents") is True
            self._target, self._merge = place_tree(
                path, cp_v1, request.get("source_name"), request.get("source_type"), copy_contents
            )
            check_space(self._target, request.get("unpacked_size"))
            self._start_extraction(owner)
        else:
            raise CopyFailure("invalid_path", f"invalid mode: {mode}")

    def _open_file(self, owner: Owner) -> None:
        from pyslicer.agent.copy_tar import check_name, inherited_mode, make_temp_file, open_directory

        parent = os.path.dirname(self._target)
        self._dir_fd = open_directory(parent, owner, self._made)
        check_name(self._dir_fd, os.path.basename(self._target), self._target)
        self._file_mode = inherited_mode(self._dir_fd, os.path.basename(self._target), self._request.get("permissions"))
        self._file_owner = owner
        self._fd, self._temp = make_temp_file(self._dir_fd, parent)

    def _start_extraction(self, owner: Owner) -> None:
        from pyslicer.agent.copy_tar import Extraction, install_tree, make_temp_dir, open_directory, remove_tree

        # merged into an existing target: the temporary directory is inside it; else beside it
        where = self._target if self._merge else os.path.dirname(self._target)
        made = self._made
        dir_fd = open_directory(where, owner, made)
        try:
            root_fd, temp = make_temp_dir(dir_fd, where)
        except BaseException:
            os.close(dir_fd)
            raise
        self._tar = True
        pipe_r, self._pipe_w = _pipe()
        os.set_blocking(self._pipe_w, False)
        reader = _PipeReader(pipe_r, lambda: self._input_delivered and not self._cancelled)
        extraction = Extraction(root_fd, owner, normalise_excludes(self._request.get("exclude")))
        target, merge = self._target, self._merge

        def job() -> int:
            try:
                extraction.run(reader)
                reader.drain()  # the end-of-archive padding, and anything after it
                if self._cancelled:
                    raise _Cancelled
                install_tree(extraction, dir_fd, temp, target, merge)
            except BaseException:
                remove_tree(dir_fd, temp)
                made.remove()
                raise
            finally:
                reader.close()
                os.close(root_fd)
                os.close(dir_fd)
            made.keep()
            return extraction.size

        self._worker = Worker(self._loop, job, self._extracted)

    def _extracted(self, size: Any, error: BaseException | None) -> None:
        if error is not None:
            if isinstance(error, _Cancelled):
                return
            self._fail(error)
            return
        self._finish({"type": Event.DONE, "path": self._target, "size": int(size)})

    # -- from the host -------------------------------------------------------------------------
    def on_data(self, channel: int, data: bytes) -> None:
        if channel != Channel.STDIN or self._done or self._cancelled or self._input_complete:
            return
        if self._tar:
            self._queue.append(data)
            self._guard(self._feed)
        else:
            self._guard(lambda: self._write(data))

    def on_eof(self, channel: int) -> None:
        if channel != Channel.STDIN or self._done or self._cancelled or self._input_complete:
            return
        self._input_complete = True
        if self._tar:
            if not self._queue:
                self._input_delivered = True
                self._close_pipe()
        else:
            self._guard(self._install_file)

    def on_window(self, increment: int) -> None:
        pass  # nothing goes out but messages

    # -- binary ----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        self._send(FrameType.WINDOW, window_payload(len(data)))

    def _install_file(self) -> None:
        from pyslicer.agent.copy_tar import install_file

        fd, self._fd = self._fd, -1
        install_file(fd, self._dir_fd, self._temp, os.path.basename(self._target), self._file_owner, self._file_mode)
        self._temp = ""
        self._made.keep()
        self._finish({"type": Event.DONE, "path": self._target, "size": self._size})

    # -- tar ---------------------------------------------------------------------------------------
    def _feed(self) -> None:
        if self._pipe_w < 0:
            return
        while self._queue:
            chunk = self._queue[0]
            try:
                written = os.write(self._pipe_w, memoryview(chunk)[self._offset :])
            except BlockingIOError:
                self._loop.add_writer(self._pipe_w, self._on_writable)
                return
            except BrokenPipeError:  # the worker stopped reading: it failed, and says why
                self._close_pipe()
                return
            self._offset += written
            if self._offset == len(chunk):
                self._queue.pop(0)
                self._offset = 0
                self._send(FrameType.WINDOW, window_payload(len(chunk)))
        self._loop.remove_writer(self._pipe_w)
        if self._input_complete:
            self._input_delivered = True  # set before the close the worker sees as EOF
            self._close_pipe()

    def _on_writable(self) -> None:
        self._guard(self._feed)

    def _close_pipe(self) -> None:
        if self._pipe_w >= 0:
            self._loop.forget(self._pipe_w)
            os.close(self._pipe_w)
            self._pipe_w = -1
        self._queue = []

    # -- the end ----------------------------------------------------------------------------------
    def _cleanup(self, success: bool) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._close_pipe()
        if self._worker is not None:
            # The worker owns what it fills: a closed pipe before the input was complete stops it, and it
            # removes its directory itself once it has let go of it.
            self._worker.forget()
            return
        if self._temp:
            import contextlib

            with contextlib.suppress(OSError):
                os.unlink(self._temp, dir_fd=self._dir_fd)
            self._temp = ""
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1
        self._made.remove()  # nothing left to remove after a success


# -- out of the guest ----------------------------------------------------------------------------------


class CopyOutSession(_Session):
    """OPEN ``CopyOutRequest`` -> MESSAGE ``CopySource`` -> DATA on stdout under credit -> EOF -> MESSAGE
    ``CopyDone`` -> CLOSE; or MESSAGE ``CopyError`` (before the source, or cutting the data short) -> CLOSE."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._credit = 0
        self._threshold = MAX_PAYLOAD
        self._fd = -1  # binary: the file; tar: our end of the worker's output pipe
        self._remaining = 0
        self._sent = 0
        self._tar = False
        self._reading = False
        self._worker: Worker | None = None
        self._worker_result: tuple[Any, BaseException | None] | None = None
        self._stop = False

    def _start(self) -> None:
        request = self._request
        self._credit = int(request.get("window") or INITIAL_WINDOW)
        # Read only with credit for a whole frame (or the rest of the file): no silly window (docs/protocol.md).
        self._threshold = max(1, min(MAX_PAYLOAD, self._credit))
        owner = self._owner()
        raw = request.get("path")
        path, _ = expand_path(raw, owner.home)
        assert isinstance(raw, str)
        mode = request.get("mode")
        if mode not in ("binary", "tar", "recursive"):
            raise CopyFailure("invalid_path", f"invalid mode: {mode}")
        try:
            # O_NONBLOCK: a fifo put in the file's place must not hang the agent's one loop in open()
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise CopyFailure("path_not_found", f"{path}: no such file or directory") from None
        except NotADirectoryError:
            raise CopyFailure("path_not_found", f"{path}: a parent is not a directory") from None
        import stat

        info = os.fstat(fd)
        is_dir = stat.S_ISDIR(info.st_mode)
        if is_dir or not stat.S_ISREG(info.st_mode):
            os.close(fd)
            if not is_dir:
                raise CopyFailure("not_a_file", f"{path} is not a regular file or a directory")
            fd = -1
        else:
            os.set_blocking(fd, True)
        self._fd = fd  # closed by _cleanup on any failure below
        name = "" if is_contents_path(raw, path) else source_name_of(path)
        if mode == "binary" and is_dir:
            raise CopyFailure("not_a_file", "must specify a file not a directory")
        if mode == "tar" and not is_dir and request.get("cp_v1") is True:
            raise CopyFailure("not_a_directory", f"{path} is a file: must specify a directory")
        source: CopySource = {
            "type": Event.SOURCE,
            "source_type": "directory" if is_dir else "file",
            "name": name,
            "file_mode": file_mode_text(info.st_mode),
            "size": 0 if is_dir else info.st_size,
        }
        if is_dir or mode == "tar":
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            self._start_tar(path, is_dir)
        else:
            self._remaining = info.st_size
        self._send_event(source)
        self._pump()

    def _start_tar(self, path: str, is_dir: bool) -> None:
        from pyslicer.agent.copy_tar import write_tree

        self._tar = True
        self._fd, pipe_w = _pipe()
        os.set_blocking(self._fd, False)
        excludes = normalise_excludes(self._request.get("exclude"))
        stopped = lambda: self._stop  # noqa: E731

        def job() -> int:
            with open(pipe_w, "wb", buffering=PIPE_SIZE) as out:
                if is_dir:
                    return write_tree(out, path, excludes, stopped)
                return _write_one_file(out, path)

        self._worker = Worker(self._loop, job, self._tar_written)

    def _tar_written(self, size: Any, error: BaseException | None) -> None:
        self._worker_result = (size, error)
        self._guard(self._pump)

    def on_data(self, channel: int, data: bytes) -> None:
        pass  # nothing comes in

    def on_eof(self, channel: int) -> None:
        pass

    def on_window(self, increment: int) -> None:
        self._credit += increment
        self._guard(self._pump)

    def _pump(self) -> None:
        if self._done or self._cancelled:
            return
        if not self._tar:
            self._pump_file()
            return
        if self._fd >= 0:
            want = self._credit >= self._threshold
            if want and not self._reading:
                self._loop.add_reader(self._fd, self._on_readable)
            elif not want and self._reading:
                self._loop.remove_reader(self._fd)
            self._reading = want
            return
        if self._worker_result is not None:  # the pipe is drained and the worker has finished
            size, error = self._worker_result
            if error is not None:
                self._fail(error)
                return
            self._send(FrameType.EOF, flags=Channel.STDOUT)
            self._finish({"type": Event.DONE, "path": str(self._request.get("path")), "size": int(size)})

    def _pump_file(self) -> None:
        # A regular file never blocks (nor can epoll watch it): read what the credit allows, then wait for more.
        while self._remaining > 0 and self._credit >= min(self._threshold, self._remaining):
            data = os.read(self._fd, min(self._credit, MAX_PAYLOAD, self._remaining))
            if not data:
                raise CopyFailure("failed", f"{self._request.get('path')} shrank while it was read")
            self._credit -= len(data)
            self._remaining -= len(data)
            self._sent += len(data)
            self._send(FrameType.DATA, data, Channel.STDOUT)
        if self._remaining == 0:
            self._send(FrameType.EOF, flags=Channel.STDOUT)
            self._finish({"type": Event.DONE, "path": str(self._request.get("path")), "size": self._sent})

    def _on_readable(self) -> None:
        self._guard(self._read_pipe)

    def _read_pipe(self) -> None:
        if self._fd < 0 or self._credit < self._threshold:
            return
        try:
            data = os.read(self._fd, min(self._credit, MAX_PAYLOAD))
        except BlockingIOError:
            return
        if not data:
            self._loop.forget(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._reading = False
            self._pump()
            return
        self._credit -= len(data)
        self._send(FrameType.DATA, data, Channel.STDOUT)
        if self._credit < self._threshold:
            self._pump()

    def _cleanup(self, success: bool) -> None:
        self._stop = True
        if self._worker is not None:
            self._worker.forget()
        if self._fd >= 0:
            self._loop.forget(self._fd)
            os.close(self._fd)  # a worker still writing gets EPIPE and stops
            self._fd = -1


def _write_one_file(out: Any, path: str) -> int:
    """A legacy tar download of a single file: one entry, its name."""
    import tarfile

    info = os.stat(path)
    member = tarfile.TarInfo(os.path.basename(path))
    member.mode, member.uid, member.gid = info.st_mode & 0o7777, info.st_uid, info.st_gid
    member.mtime, member.size = int(info.st_mtime), info.st_size
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as archive, open(path, "rb") as file:
        archive.addfile(member, file)
    return info.st_size
