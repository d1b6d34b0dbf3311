"""A folder browser limited to the allowed roots, for a phone picking where to start a session.

The phone can only name folders it was shown, so the rules are strict rather than helpful: a path
must be absolute, free of NUL and of any ``..`` component (refused before the disk is touched,
even when it would land inside a root), and its real path must lie inside an allowed root. That
last check on the *resolved* path is what catches a symlink that leads out of the roots; inside a
listing such a symlink is simply left out, as is a broken one, so a client never sees a path it
could not open. Every path we return is a real path inside a root.

Listing is bounded: ``os.scandir`` stops after ``limit`` entries (or :data:`MAX_SCANNED` skipped
ones) and says so with ``truncated``, so a folder of a million files costs a bounded amount of
work. The functions here block on the filesystem; the ``*_async`` variants run them in a thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

import trio

from ..errors import BadRequest, Forbidden, NotFound
from ..wire.requests import FolderEntry, FolderListing, RecentFolder

MAX_SCANNED: Final = 20_000  #: directory entries read per listing, shown or not

__all__ = [
    "FolderEntry",
    "FolderListing",
    "RecentFolder",
    "browse",
    "browse_async",
    "recent_folders",
    "recent_folders_async",
]


def browse(
    path: str | None,
    roots: Sequence[Path],
    *,
    hidden: bool = False,
    files: bool = False,
    limit: int = 500,
) -> FolderListing:
    """List the folder ``path`` (or the roots, for None); see the module docstring for the rules.

    Raises BadRequest (``bad_path``, ``not_a_directory``, ``bad_limit``), Forbidden
    (``path_not_allowed``, ``unreadable``) or NotFound (``no_such_folder``).
    """
    if limit < 1:
        raise BadRequest(f"limit must be at least 1, got {limit}", code="bad_limit")
    real_roots = _real_roots(roots)
    if path is None:
        return _list_roots(real_roots, limit)
    _check_syntax(path)
    real = os.path.realpath(path)
    root = _root_of(real, real_roots)
    if root is None:
        raise Forbidden(f"{path} is outside the allowed roots", code="path_not_allowed")
    entries, truncated = _scan(path, real, real_roots, hidden=hidden, files=files, limit=limit)
    parent = os.path.dirname(real)
    return FolderListing(
        path=real,
        parent=parent if parent != real and _root_of(parent, real_roots) else None,
        root=root,
        entries=sorted(entries, key=_order),
        truncated=truncated,
    )


async def browse_async(
    path: str | None,
    roots: Sequence[Path],
    *,
    hidden: bool = False,
    files: bool = False,
    limit: int = 500,
) -> FolderListing:
    """:func:`browse` in a worker thread; a cancelled request abandons a hung mount's thread."""
    work = partial(browse, path, tuple(roots), hidden=hidden, files=files, limit=limit)
    return await trio.to_thread.run_sync(work, abandon_on_cancel=True)


def recent_folders(
    uses: Iterable[tuple[str, float]], roots: Sequence[Path], limit: int = 10
) -> list[RecentFolder]:
    """The folders sessions ran in, newest first: ``uses`` is (cwd, last_activity) per session.

    Folders that vanished, stopped being directories or now resolve outside the roots are left
    out, so a client is never offered a folder it could not start a session in.
    """
    by_cwd: dict[str, tuple[float, int]] = {}
    for cwd, last_used in uses:
        newest, count = by_cwd.get(cwd, (last_used, 0))
        by_cwd[cwd] = (max(newest, last_used), count + 1)
    real_roots = _real_roots(roots)
    by_real: dict[str, tuple[float, int]] = {}
    for cwd, (last_used, count) in by_cwd.items():
        if not cwd.startswith("/") or "\x00" in cwd:
            continue
        real = os.path.realpath(cwd)
        if _root_of(real, real_roots) is None or not os.path.isdir(real):
            continue
        newest, total = by_real.get(real, (last_used, 0))
        by_real[real] = (max(newest, last_used), total + count)
    folders = [RecentFolder(path, used, count) for path, (used, count) in by_real.items()]
    folders.sort(key=lambda folder: (-folder.last_used, folder.path))
    return folders[: max(limit, 0)]


async def recent_folders_async(
    uses: Iterable[tuple[str, float]], roots: Sequence[Path], limit: int = 10
) -> list[RecentFolder]:
    """:func:`recent_folders` in a worker thread (it stats every folder)."""
    work = partial(recent_folders, list(uses), tuple(roots), limit)
    return await trio.to_thread.run_sync(work, abandon_on_cancel=True)


# -- helpers -------------------------------------------------------------------------------


def _real_roots(roots: Sequence[Path]) -> list[str]:
    """The roots resolved again: the caller resolved them, but a root may be a symlink by now."""
    return list(dict.fromkeys(os.path.realpath(root) for root in roots))


def _root_of(real: str, roots: Sequence[str]) -> str | None:
    """The outermost root holding ``real``, so ``parent`` climbs as far as it is allowed."""
    inside = [root for root in roots if Path(real).is_relative_to(root)]
    return min(inside, key=len) if inside else None


def _check_syntax(path: str) -> None:
    if not isinstance(path, str) or not path or "\x00" in path:
        raise BadRequest("path must be a non-empty string without NUL", code="bad_path")
    if not path.startswith("/"):
        raise BadRequest(f"path must be absolute, got {path!r}", code="bad_path")
    if ".." in path.split("/"):
        # Refused even when it would land inside a root: clients navigate with ``parent``.
        raise BadRequest(f"path must not contain '..', got {path!r}", code="bad_path")


def _list_roots(roots: Sequence[str], limit: int) -> FolderListing:
    entries = [
        FolderEntry(
            name=os.path.basename(root) or root,
            path=root,
            kind="dir",
            hidden=False,
            git=os.path.lexists(os.path.join(root, ".git")),
        )
        for root in roots
        if os.path.isdir(root)
    ]
    return FolderListing(None, None, None, entries[:limit], truncated=len(entries) > limit)


def _scan(
    asked: str, real: str, roots: Sequence[str], *, hidden: bool, files: bool, limit: int
) -> tuple[list[FolderEntry], bool]:
    entries: list[FolderEntry] = []
    try:
        with os.scandir(real) as scanner:
            for scanned, item in enumerate(scanner):
                if scanned >= MAX_SCANNED:
                    return entries, True
                entry = _entry(item, roots, hidden=hidden, files=files)
                if entry is None:
                    continue
                if len(entries) == limit:
                    return entries, True
                entries.append(entry)
    except FileNotFoundError:
        raise NotFound(f"{asked} does not exist", code="no_such_folder") from None
    except NotADirectoryError:
        raise BadRequest(f"{asked} is not a directory", code="not_a_directory") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink loop is as good as a broken link
            raise NotFound(f"{asked} does not exist", code="no_such_folder") from None
        raise Forbidden(f"cannot read {asked}: {exc.strerror or exc}", code="unreadable") from None
    return entries, False


def _entry(
    item: os.DirEntry[str], roots: Sequence[str], *, hidden: bool, files: bool
) -> FolderEntry | None:
    """The entry to show for ``item``, or None: filtered out, broken, or leading out of roots."""
    is_hidden = item.name.startswith(".")
    if is_hidden and not hidden:
        return None
    try:
        if item.is_symlink():
            path = os.path.realpath(item.path)
            if _root_of(path, roots) is None:
                return None  # never list (or stat) what a symlink leads to outside the roots
            is_dir, is_file = os.path.isdir(path), os.path.isfile(path)  # both False: broken
        else:
            path = item.path
            is_dir = item.is_dir(follow_symlinks=False)
            is_file = item.is_file(follow_symlinks=False)
    except OSError:
        return None  # vanished while we looked
    if is_dir:
        git = os.path.lexists(os.path.join(path, ".git"))
        return FolderEntry(item.name, path, "dir", is_hidden, git)
    if is_file and files:
        return FolderEntry(item.name, path, "file", is_hidden)
    return None  # not wanted, broken, or a socket, FIFO or device


def _order(entry: FolderEntry) -> tuple[bool, str, str]:
    return entry.kind != "dir", entry.name.casefold(), entry.name
