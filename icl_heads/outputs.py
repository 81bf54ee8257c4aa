"""Where outputs go: output paths checked before anything is written, and atomic writes.

Every writer of the toolkit (``ExperimentResult.save``, ``HeadScores.save``,
``write_report``, the CLI's ``--out``) checks its target first, so a bad path fails at once
with a ``ValueError`` that names the path and the fix (never an error from inside
``pathlib``), and writes so that a killed process never leaves something that looks
complete:

* a file is written to a temporary sibling and renamed over the target
  (:func:`write_file`, :func:`atomic_file`);
* a directory is built in a temporary sibling folder and renamed into place once complete
  (:func:`atomic_directory`); an existing one is replaced only then.

Example::

    from icl_heads.outputs import atomic_directory, check_output_file, write_file

    path = check_output_file("results/report.html", what="write_report: path")
    write_file(path, "<html>...</html>")
    with atomic_directory("results/ablation", what="save") as folder:
        (folder / "table.csv").write_text("...")    # appears at results/ablation only now
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

#: Temporary siblings are named ``.<target>.<TEMP_TAG>-<pid>-<random>``: hidden, never a
#: result, removed by the next write to the same target once their process has ended.
TEMP_TAG = "icl-heads-tmp"


def check_output_file(path: str | os.PathLike, *, what: str = "--out") -> Path:
    """Check that a file can be written at ``path`` before anything is computed or
    written: it is not empty, not a directory, no parent is a file, and its directory can
    be created and written (missing parent directories are created; a probe file is
    written there, so read-only places fail here). ``what`` names the argument in the
    message (``"--out"``, ``"HeadScores.save: path"``).

    Example::

        check_output_file("results/tr.json", what="HeadScores.save: path")

    Returns:
        The path.

    Raises:
        ValueError: naming the path and the fix.
    """
    text = _text(path, what, "a file path such as results/scores.json")
    target = Path(text).expanduser()
    if target.is_dir():
        raise ValueError(
            f"{what} {text!r} is a directory; give a file path inside it, such as "
            f"{str(target / 'result.json')!r}."
        )
    _make_writable_dir(target.parent, text, what, "path", probe=not target.exists())
    if target.exists():
        try:
            with target.open("ab"):  # opens for writing without changing the file
                pass
        except OSError as err:
            raise ValueError(
                f"{what} {text!r} cannot be written ({err.strerror or err}); "
                "choose a writable location."
            ) from None
    return target


def check_output_dir(path: str | os.PathLike, *, what: str = "--out", create: bool = True) -> Path:
    """Check that a directory of outputs can be written at ``path`` before anything is
    computed: it is not empty, not a file, no parent is a file, and it can be created and
    written. ``create=True`` (the CLI's ``--out``) creates the directory and probes it;
    ``create=False`` (a directory that :func:`atomic_directory` will put into place)
    creates and probes its parent only.

    Example::

        check_output_dir("results/ablation", what="ExperimentResult.save: directory")

    Returns:
        The path.

    Raises:
        ValueError: naming the path and the fix.
    """
    text = _text(path, what, "a directory such as results/ablation")
    target = Path(text).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"{what} {text!r} is a file; give a directory path, or remove the file.")
    if create:
        _make_writable_dir(target, text, what, "directory")
    else:
        if _is_anchor(target):
            raise ValueError(
                f"{what} {text!r} names no directory of its own; give one such as "
                "'results/ablation'."
            )
        _make_writable_dir(_absolute(target).parent, text, what, "directory")
    return target


def write_file(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically: to a temporary sibling, then
    renamed over ``path`` (readers see the old file or the new one, never a part).

    Example::

        write_file("results/page.html", "<html>...</html>")
    """
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_file(path) as temporary:
        temporary.write_bytes(payload)
    return Path(path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed over ``path`` when the block ends
    without an error, removed otherwise (for writers that need a path, e.g. Parquet).

    Example::

        with atomic_file("maps/tr.parquet") as temporary:
            pyarrow.parquet.write_table(table, temporary)
    """
    target = Path(path)
    temporary = _temporary_sibling(target)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    *,
    what: str = "directory",
    replaceable: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """A new temporary sibling folder of ``path`` to fill; renamed into place as ``path``
    when the block ends without an error (an existing ``path`` is replaced only then),
    removed otherwise. A killed process leaves a hidden temporary folder beside ``path``,
    never a partial ``path``; the next write to ``path`` removes it.

    ``replaceable(existing)`` says whether an existing directory at ``path`` may be replaced
    (checked before the block runs; default: only an empty one); otherwise a ValueError
    names it.

    Example::

        with atomic_directory("results/ablation") as folder:
            (folder / "table.csv").write_text("...")
    """
    target = _absolute(Path(path))
    shown = str(path)
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{what} {shown!r} is a file; give a directory path.")
        allowed = replaceable or (lambda p: not any(p.iterdir()))
        if not allowed(target):
            raise ValueError(
                f"{what} {shown!r} already holds other files; give a new or empty "
                "directory (the old contents would be replaced)."
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    temporary = target.parent / f".{target.name}.{TEMP_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        yield temporary
        if target.exists():
            old = target.parent / f".{target.name}.{TEMP_TAG}-{os.getpid()}-old"
            os.replace(target, old)
            os.replace(temporary, target)
            if old.is_symlink():
                old.unlink()
            else:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temporary, target)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary sibling left by :func:`atomic_directory` or
    :func:`atomic_file` (never a result; readers skip it)."""
    name = Path(path).name
    return name.startswith(".") and f".{TEMP_TAG}-" in name


# --------------------------------------------------------------------------- helpers


def _text(path: object, what: str, example: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or Path), got {type(path).__name__}.")
    text = os.fspath(path)
    if isinstance(text, bytes) or not text.strip():
        raise ValueError(f"{what} is empty; give {example}.")
    return text


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _is_anchor(path: Path) -> bool:
    """``.``, ``..``, ``/``: paths without a name of their own (cannot be renamed into)."""
    return path.name in ("", ".", "..") or _absolute(path) == _absolute(path).parent


def _make_writable_dir(directory: Path, text: str, what: str, kind: str, *, probe=True) -> None:
    """Create ``directory`` (and missing parents) and write a probe file in it, so that an
    unwritable target fails before any computation, also as root."""
    for ancestor in (directory, *directory.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise ValueError(
                    f"{what} {text!r}: {str(ancestor)!r} is a file, so nothing can "
                    f"be written under it; choose another {kind}."
                )
            break
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{what} {text!r}: cannot create the directory {str(directory)!r} "
            f"({err.strerror or err}); choose a writable location."
        ) from None
    if not probe:
        return
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".icl-heads-probe-"):
            pass
    except OSError as err:
        raise ValueError(
            f"{what} {text!r} cannot be written ({err.strerror or err}); choose a writable location."
        ) from None


def _temporary_sibling(target: Path) -> Path:
    return target.parent / (
        f".{target.name}.{TEMP_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}{target.suffix}"
    )


def _remove_leftovers(target: Path) -> None:
    """Remove the temporary siblings of ``target`` whose process has ended (a killed run)."""
    prefix = f".{target.name}.{TEMP_TAG}-"
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid = entry.name[len(prefix) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftover (an earlier write of this process failed)
    if os.name != "posix":
        return True  # no cheap liveness test: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
