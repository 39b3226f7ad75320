"""Writing a run's files: atomically, with the user's umask, claimed before any work.

Every file prunecli writes goes through `atomic_write`, and every command that writes a
checkpoint first claims its output with `claim_output`. Together they promise:

* **atomic**: a temporary file beside the target (``.NAME.XXXXXXXX.tmp``), fsync, then
  ``os.replace``: a crash or ``kill -9`` leaves the previous file intact and no truncated
  one. The temporaries a ``kill -9`` leaves behind are removed by the next run that claims
  the same output.
* **the user's umask**: ``mkstemp`` creates files 0600; ours get ``0666 & ~umask``, as a
  file ``open`` creates would (replacing a 0644 file leaves a 0644 file under umask 022).
* **one clear line when writing fails**: "no space left on device", "read-only file
  system", "permission denied" (`OutputError`), never an internal error.
* **checked before any work**: the path is not a folder, holds no control characters (a
  newline would break ``$(prunecli ...)`` chaining), and its folder can be written.
* **never over another run**: an existing file at the output is refused unless the user
  passes ``--overwrite`` or the run resumes that very file.
* **one writer**: an exclusive ``flock`` on ``.NAME.lock`` beside the output (holding the
  writer's PID) makes a second run on the same output fail at once, naming the holder.
  The lock file is removed when the claim ends.

`written()` lists what this process has written, so an interrupted command can say so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from prunecli import _signals
from prunecli._console import has_control, printable
from prunecli.errors import OptionError, OutputError

_WRITTEN: list[Path] = []


def written() -> list[Path]:
    """Files this process has written since `forget_written` (oldest first)."""
    return list(_WRITTEN)


def forget_written() -> None:
    _WRITTEN.clear()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe; the CLI is one thread here)
    os.umask(mask)
    return mask


def why(e: OSError) -> str:
    """An OSError as the user needs it: the cause, lower case, without errno noise."""
    named = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EFBIG: "file too large for this file system or limit",
        errno.ENAMETOOLONG: "file name too long",
        errno.ENOTDIR: "a component of the path is not a folder",
        errno.EISDIR: "is a folder",
    }
    return named.get(e.errno, (e.strerror or str(e)).lower())


def _mode_for(path: Path) -> int:
    """A replaced file keeps its permissions (never widened); a new one gets 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _space_note(folder: Path) -> str:
    """Why torch's writer failed: it hides the OSError, so look at the free space."""
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 64 << 20:
            return "no space left on device"
    except OSError:
        pass
    return "the write failed (disk full or a file-size limit?)"


def atomic_write(path: Path, write) -> Path:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {path}: cannot create folder {path.parent}: {why(e)}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {why(e)}") from None
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _signals.check()  # a Ctrl-C some library swallowed: do not replace anything after it
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {why(e)}; nothing was replaced") from None
        if isinstance(e, RuntimeError) and ("write" in str(e).lower() or "inline_container" in str(e)):
            # torch.save's zip writer reports a failed or short write as its own RuntimeError
            raise OutputError(f"cannot write {path}: {_space_note(path.parent)}; nothing was replaced") from None
        raise
    _WRITTEN.append(path)
    return path


# ---------------------------------------------------------------------------- claiming an output

def check_output_path(path: Path) -> None:
    """The checks that need no lock: a regular file path without control characters, in a writable folder."""
    try:
        _check_output_path(path)
    except OSError as e:  # a name too long, a loop of links...
        raise OutputError(f"cannot write {printable(path)}: {why(e)}") from None


def _check_output_path(path: Path) -> None:
    text = str(path)
    if has_control(text):
        raise OptionError(f"{{output}} {text!r}: contains a newline or control character; choose a plain file name")
    if text in ("", ".") or path.name in ("", ".", ".."):
        raise OptionError(f"{{output}} {text!r}: not a file name")
    if path.is_dir():
        raise OptionError(f"{{output}} {path}: is a folder; give a file path such as {path / 'model.pt'}")
    if path.exists() and not path.is_file():
        # a device, FIFO or socket: replacing it (as root, /dev/full) would break the system
        raise OptionError(f"{{output}} {path}: exists and is not a regular file; choose another path")
    folder = path.parent
    while not folder.exists():
        if folder == folder.parent:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OptionError(f"{{output}} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        probe = OSError(errno.EROFS if _read_only(folder) else errno.EACCES, "")
        raise OutputError(f"cannot write {path}: {folder}: {why(probe)}")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _stale_temporaries(path: Path) -> list[Path]:
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp$")
    try:
        return [p for p in path.parent.iterdir() if pattern.match(p.name)]
    except OSError:
        return []


def _lock(path: Path) -> int:
    """An exclusive flock on ``.NAME.lock`` beside ``path``; the fd holds it."""
    import fcntl

    lock_path = path.with_name(f".{path.name}.lock")
    for _ in range(10):  # the previous holder may unlink the file between our open and flock
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        except OSError as e:
            raise OutputError(f"cannot write {path}: {why(e)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputError(f"{path} is being written by another prunecli run{pid}; wait for it or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise OutputError(f"cannot lock {path}: its lock file keeps changing")


def _unlock(path: Path, fd: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path.with_name(f".{path.name}.lock"))  # while still holding it: no one else owns it
    os.close(fd)


@contextlib.contextmanager
def claim_output(
    path: Path,
    *,
    overwrite: bool = False,
    resumes: Optional[Path] = None,
    side: Iterable[Path] = (),
    lock: bool = True,
) -> Iterator[Path]:
    """Check and lock ``path`` for this run (see the module docstring); yields it.

    ``resumes``: the checkpoint this run continues; replacing it needs no ``--overwrite``.
    ``side``: files written beside the checkpoint (best copy, metrics, config), whose stale
    temporaries are cleaned too. ``lock=False`` checks without locking (the ranks of a
    torchrun job other than the one that writes).
    """
    path = Path(path)
    side = [Path(p) for p in side]
    check_output_path(path)
    if not lock:
        _refuse_existing(path, side, overwrite, resumes)
        yield path
        return
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot write {path}: cannot create folder {path.parent}: {why(e)}") from None
    before = len(_WRITTEN)
    fd = _lock(path)
    try:
        # checked under the lock: a run that finished just before this one is seen
        _refuse_existing(path, side, overwrite, resumes)
        for target in (path, *side):
            for tmp in _stale_temporaries(Path(target)):  # left by a killed writer: we hold the lock now
                with contextlib.suppress(OSError):
                    tmp.unlink()
        yield path
    finally:
        _unlock(path, fd)
        if len(_WRITTEN) == before:  # nothing written: leave no folder we made either
            for d in missing:
                with contextlib.suppress(OSError):
                    d.rmdir()


def _refuse_existing(path: Path, side: list[Path], overwrite: bool, resumes: Optional[Path]) -> None:
    """An existing output (or side file of it) is another run's, unless replaced on purpose or resumed."""
    resuming = resumes is not None and path.exists() and path.samefile(resumes)
    if overwrite or resuming:
        return
    for existing in (path, *side):
        if existing.exists():
            what = f"{path} already exists" if existing == path else f"{path}: {existing.name} beside it already exists"
            raise OptionError(f"{{output}} {what}; pass {{overwrite}} to replace it, or write elsewhere")
