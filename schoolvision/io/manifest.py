"""The manifest of an output folder: the files schoolvision wrote there, and nothing else.

``--overwrite`` must never remove a file the user put in a folder, only what an earlier run of the
tool wrote. Every output folder therefore holds ``.schoolvision-manifest``: one relative path a
line, appended *before* the file is written (by :func:`~schoolvision.io.atomic.atomic_path`
through :func:`record`), so even a killed run leaves a manifest that lists everything it wrote.
Lines are appended with ``O_APPEND``, so the Ray actors of a scan (``--engine ray``) can record into the same
folder; duplicates are harmless and a torn last line is ignored. The file is rewritten (atomically)
only when ``--overwrite`` clears the folder.

Atomic writes go through hidden temporaries named ``.<stem>.<8 random chars>.tmp<suffix>``
(:func:`temporary_affixes`); the next run into a folder removes those a killed run left
(:func:`remove_temporaries`) and nothing else.

A folder holding a manifest is an output folder: imagery listing skips such sub-folders
(:func:`input_files`), so an output written inside an imagery folder is not read as imagery.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

from schoolvision.errors import UserError

MANIFEST = ".schoolvision-manifest"
HEADER = "# files schoolvision wrote in this folder (relative paths); --overwrite removes these and only these\n"
TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\..*)?$")
"""Names of the hidden temporaries of atomic writes (and their GDAL side-cars): ``.name.k3j_x9a2.tmp.tif``."""

_registered: set[Path] = set()  # output folders of this process whose manifest is made on the first write
_known: dict[Path, tuple[int, set[str]]] = {}  # root -> (manifest inode, entries this process knows it lists)


def temporary_affixes(target: Path) -> tuple[str, str]:
    """(prefix, suffix) for ``tempfile.mkstemp``/``mkdtemp`` of a temporary of ``target``; see :data:`TEMPORARY`.

    The suffix keeps the target's suffix so that format drivers (GDAL, OGR) pick the right format.
    """
    return f".{target.stem}.", f".tmp{target.suffix}"


def is_temporary(name: str) -> bool:
    """True for the name of a temporary of an atomic write (or a staging folder)."""
    return bool(TEMPORARY.match(name))


def holds_manifest(folder: str | Path) -> bool:
    """True when ``folder`` is a schoolvision output folder (it holds a manifest)."""
    return (Path(folder) / MANIFEST).is_file()


def _abs(path: str | Path) -> Path:
    return Path(os.path.abspath(path))


def register(root: str | Path) -> None:
    """Make ``root`` an output folder of this process: its manifest is created on the first write into it."""
    _registered.add(_abs(root))


def start(root: str | Path) -> Path:
    """Create the manifest of ``root`` (a folder) if it has none; return its path."""
    root = _abs(root)
    path = root / MANIFEST
    if not path.is_file():
        _rewrite(root, [])
    _registered.discard(root)
    return path


def root_of(path: str | Path) -> Path | None:
    """The output folder ``path`` lies in: its nearest ancestor holding (or registered for) a manifest."""
    path = _abs(path)
    for folder in path.parents:
        if folder in _registered or (folder / MANIFEST).is_file():
            return folder
    return None


def read(root: str | Path) -> list[str]:
    """The relative paths listed in the manifest of ``root``, first occurrence order, without duplicates."""
    path = Path(root) / MANIFEST
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"unreadable schoolvision manifest ({type(exc).__name__}); remove it by hand", path) from None
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a torn last line of a killed run
    return list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))


def _relative(root: Path, path: Path) -> str:
    return _abs(path).relative_to(root).as_posix()


def _listed(root: Path) -> set[str]:
    """The entries this process knows the manifest of ``root`` lists (a cache, dropped when the file is replaced)."""
    try:
        inode = (root / MANIFEST).stat().st_ino
    except OSError:
        inode = -1
    cached = _known.get(root)
    if cached is None or cached[0] != inode:
        cached = _known[root] = (inode, set(read(root)))
    return cached[1]


def record(target: str | Path) -> None:
    """Note in its folder's manifest that schoolvision is about to write ``target`` (file or folder).

    Nothing happens outside an output folder. Inside one, a ``target`` that exists but is not listed
    was put there by someone else and is refused, so no run ever replaces a user's file.

    Raises:
        UserError: ``target`` exists and the manifest does not list it.
    """
    target = _abs(target)
    root = root_of(target)
    if root is None:
        return
    if root in _registered:
        start(root)
    rel = _relative(root, target)
    known = _listed(root)
    if target.exists() or target.is_symlink():
        if rel not in known:
            known.update(read(root))  # another process (a Ray actor) may have listed it
        if rel not in known and not any(a in known for a in _ancestors(rel)):
            raise UserError("exists and schoolvision did not write it (its output folder's manifest does not list "
                            "it); move it away or choose another --out", target)
    if rel not in known:
        _append(root, [rel])


def _append(root: Path, entries: list[str]) -> None:
    with open(root / MANIFEST, "a", encoding="utf-8") as f:
        f.write("".join(e + "\n" for e in entries))
    _listed(root).update(entries)


def add(root: str | Path, entries: Iterable[str]) -> None:
    """Append ``entries`` (relative paths) to the manifest of ``root`` in one write; see :func:`record`."""
    root = _abs(root)
    start(root)
    known = _listed(root)
    known.update(read(root))
    new = [e for e in dict.fromkeys(entries) if e not in known]
    if new:
        _append(root, new)


def _rewrite(root: Path, entries: list[str]) -> None:
    """Replace the manifest of ``root`` atomically with ``entries``."""
    prefix, suffix = temporary_affixes(root / MANIFEST)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(HEADER + "".join(e + "\n" for e in entries))
        os.replace(tmp, root / MANIFEST)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _known[root] = ((root / MANIFEST).stat().st_ino, set(entries))


def _inside(root: Path, entry: str) -> Path | None:
    """``root / entry`` when ``entry`` is a plain relative path below ``root``; None for anything else."""
    if not entry or entry.startswith("/") or ".." in Path(entry).parts or entry == MANIFEST:
        return None
    path = root / entry
    parent, real_root = path.parent.resolve(), root.resolve()
    if parent != real_root and real_root not in parent.parents:  # a folder replaced by a link to elsewhere
        return None
    return path


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _prune(root: Path, folders: Iterable[Path]) -> None:
    """Remove the now-empty folders among ``folders`` and their ancestors below ``root``."""
    for folder in sorted(set(folders), key=lambda p: len(p.parts), reverse=True):
        while folder != root and root in folder.parents:
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone): stop here
                break
            folder = folder.parent


def remove_listed(root: str | Path, keep: Iterable[str] = ()) -> list[str]:
    """Delete every file (and folder) the manifest of ``root`` lists, except ``keep``; return what was removed.

    Folders emptied by this are removed too; anything not listed stays. The manifest then lists ``keep``.
    """
    root = _abs(root)
    keep = set(keep)
    removed, parents = [], []
    for entry in read(root):
        path = _inside(root, entry)
        if entry in keep or path is None:
            continue
        if path.exists() or path.is_symlink():
            _delete(path)
            removed.append(entry)
        parents.append(path.parent)
    _prune(root, parents)
    _rewrite(root, [e for e in read(root) if e in keep])
    return removed


def holds_files(root: str | Path) -> bool:
    """True when ``root`` holds a file other than its manifest and temporaries of a killed run."""
    for here, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not is_temporary(d)]
        if any(not is_temporary(f) and not (f == MANIFEST and Path(here) == Path(root)) for f in files):
            return True
    return False


def discard_if_empty(root: str | Path) -> None:
    """Remove ``root`` when it holds nothing but its manifest (a run that failed before writing anything)."""
    root = _abs(root)
    if root.is_dir() and all(p.name == MANIFEST for p in root.iterdir()):
        (root / MANIFEST).unlink(missing_ok=True)
        root.rmdir()
        _known.pop(root, None)


def discard_unwritten(root: str | Path) -> bool:
    """Remove ``root``, made by a run that failed before writing a file there; True when it was removed.

    Only a folder holding nothing but its manifest, temporaries of atomic writes and empty folders
    goes: a file of any kind keeps it (and everything in it).
    """
    root = _abs(root)
    if not root.is_dir() or root.is_symlink() or holds_files(root):
        return False
    remove_temporaries(root)
    (root / MANIFEST).unlink(missing_ok=True)
    for here, _, _ in sorted(os.walk(root), key=lambda w: len(Path(w[0]).parts), reverse=True):
        try:
            Path(here).rmdir()
        except OSError:  # not empty after all (a file arrived): keep it
            return False
    _known.pop(root, None)
    _registered.discard(root)
    return True


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete the hidden temporaries a killed run left anywhere under ``root`` (see :data:`TEMPORARY`)."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [d for d in dirs if is_temporary(d)]:
            shutil.rmtree(Path(folder) / name, ignore_errors=True)
            dirs.remove(name)
            removed.append(Path(folder) / name)
        for name in files:
            if is_temporary(name):
                (Path(folder) / name).unlink(missing_ok=True)
                removed.append(Path(folder) / name)
    return removed


def remove_temporaries_of(targets: Iterable[str | Path]) -> list[Path]:
    """Delete the temporaries (and GDAL side-cars) a killed writer left of these targets, and no others.

    For a unit retried after its worker died, while other workers write other files in the same folder.
    """
    removed = []
    for target in map(Path, targets):
        prefix, _ = temporary_affixes(target)
        if target.parent.is_dir():
            for path in target.parent.iterdir():
                if path.name.startswith(prefix) and is_temporary(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def foreign_files(root: str | Path, patterns: Iterable[str]) -> list[Path]:
    """What matches the glob ``patterns`` under ``root`` but was not written by schoolvision.

    A file is foreign when its manifest does not list it (nor a folder above it); a folder when
    neither it nor anything in it is listed (other files in a folder schoolvision writes into are
    not in the way).
    """
    root = _abs(root)
    listed = set(read(root))
    found = []
    for pattern in patterns:
        for match in sorted(root.glob(pattern)):
            rel = _relative(root, match)
            if rel in listed or any(a in listed for a in _ancestors(rel)) or is_temporary(match.name):
                continue
            if match.is_dir() and any(e.startswith(rel + "/") for e in listed):
                continue
            found.append(match)
    return found


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def move_into(staging: str | Path, out: str | Path, last: Iterable[str] = ()) -> list[str]:
    """Move the files listed in the manifest of ``staging`` into ``out``; remove ``out``'s earlier own files.

    The entries are added to ``out``'s manifest first, then moved (``last`` after all others, so the
    folder is complete only when they are there), then ``out``'s files from an earlier run that this
    one did not write again are deleted, then ``staging``. A file of the user under one of the names
    is refused before anything moves.

    Returns:
        The entries moved.

    Raises:
        UserError: ``out`` holds a file under one of the names that its manifest does not list.
    """
    staging, out = _abs(staging), _abs(out)
    entries = [e for e in read(staging) if (staging / e).is_file()]
    listed = set(read(out))
    for e in entries:
        if ((out / e).exists() or (out / e).is_symlink()) and e not in listed:
            raise UserError("exists and schoolvision did not write it (its output folder's manifest does not list "
                            "it); move it away or choose another --out", out / e)
    previous = [e for e in read(out) if e not in set(entries)]
    add(out, entries)
    late = [e for e in entries if e in set(last)]
    for e in [e for e in entries if e not in set(late)] + late:
        (out / e).parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / e, out / e)
    stale = [e for e in previous if (p := _inside(out, e)) is not None and (p.exists() or p.is_symlink())]
    for e in stale:
        _delete(out / e)
    _prune(out, [(out / e).parent for e in stale])
    _rewrite(out, list(dict.fromkeys(entries)))
    shutil.rmtree(staging, ignore_errors=True)
    return entries


def input_files(folder: str | Path) -> list[Path]:
    """Every file under ``folder``, sorted, skipping output folders below it and hidden temporaries.

    ``folder`` itself is read even when it is an output folder (naming it is explicit); each skipped
    output folder is one warning.
    """
    found, skipped = [], []
    for here, dirs, files in os.walk(folder):
        here_path = Path(here)
        keep = []
        for d in sorted(dirs):
            if is_temporary(d):
                continue
            if holds_manifest(here_path / d):
                skipped.append(here_path / d)
            else:
                keep.append(d)
        dirs[:] = keep
        found.extend(here_path / name for name in files if name != MANIFEST and not is_temporary(name))
    for s in skipped:
        warnings.warn(f"{s}: skipped, a schoolvision output folder (name it in --imagery to read it as imagery)",
                      stacklevel=2)
    return sorted(found)
