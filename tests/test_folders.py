"""The folder browser: exact listings, every refusal and its code, and a containment property.

One tree serves the read-only tests (built once per module)::

    base/
    ├── outside/            secret/, secret.txt               (not under any root)
    ├── root/               Alpha/, beta/ (.git/, deep/), gamma/ (.git file), .hidden/,
    │                       a.txt, B.txt, .env,
    │                       escape -> ../outside, escape-file -> ../outside/secret.txt,
    │                       to-beta -> beta, to-file -> a.txt, broken -> nowhere, loop -> loop
    ├── root2/              only/
    └── root-link -> root   (a root given through a symlink)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecode_trio.errors import BadRequest, ClientError, Forbidden, NotFound
from sidecode_trio.sessions.folders import (
    FolderEntry,
    FolderListing,
    RecentFolder,
    browse,
    browse_async,
    recent_folders,
    recent_folders_async,
)


@attrs.frozen
class Tree:
    base: Path
    root: Path
    root2: Path
    outside: Path

    @property
    def roots(self) -> list[Path]:
        return [self.root, self.root2]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = Path(os.path.realpath(tmp_path_factory.mktemp("folders")))
    outside, root, root2 = base / "outside", base / "root", base / "root2"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret.txt").write_text("no")
    for name in ("Alpha", "beta/.git", "beta/deep", "gamma", ".hidden"):
        (root / name).mkdir(parents=True)
    (root / "gamma" / ".git").write_text("gitdir: /elsewhere\n")  # a worktree's .git file
    for name in ("a.txt", "B.txt", ".env"):
        (root / name).write_text(name)
    links = {
        "escape": "../outside",
        "escape-file": "../outside/secret.txt",
        "to-beta": "beta",
        "to-file": "a.txt",
        "broken": "nowhere",
        "loop": "loop",
    }
    for name, target in links.items():
        (root / name).symlink_to(target)
    (root2 / "only").mkdir(parents=True)
    (base / "root-link").symlink_to("root")
    return Tree(base, root, root2, outside)


def entry(tree: Tree, name: str, path: str, kind: str = "dir", git: bool = False) -> FolderEntry:
    return FolderEntry(name, str(tree.root / path), kind, name.startswith("."), git)


def names(listing: FolderListing) -> list[str]:
    return [e.name for e in listing.entries]


def refusal(error: type[ClientError], code: str, path: str, roots: list[Path]) -> str:
    with pytest.raises(error) as caught:
        browse(path, roots)
    assert caught.value.code == code
    return caught.value.message


# -- listings --------------------------------------------------------------------------------


def test_lists_folders_first_case_insensitively_without_escapes_or_broken_links(
    tree: Tree,
) -> None:
    listing = browse(str(tree.root), tree.roots)
    assert listing == FolderListing(
        path=str(tree.root),
        parent=None,  # the root's parent is outside every root
        root=str(tree.root),
        entries=[
            entry(tree, "Alpha", "Alpha"),
            entry(tree, "beta", "beta", git=True),
            entry(tree, "gamma", "gamma", git=True),
            entry(tree, "to-beta", "beta", git=True),  # a link inside the roots: its real path
        ],
    )


def test_files_and_hidden_entries_on_request(tree: Tree) -> None:
    listing = browse(str(tree.root), tree.roots, files=True)
    assert names(listing) == ["Alpha", "beta", "gamma", "to-beta", "a.txt", "B.txt", "to-file"]
    assert listing.entries[-1] == entry(tree, "to-file", "a.txt", kind="file")

    everything = browse(str(tree.root), tree.roots, files=True, hidden=True)
    assert names(everything) == [
        ".hidden", "Alpha", "beta", "gamma", "to-beta",
        ".env", "a.txt", "B.txt", "to-file",
    ]  # fmt: skip
    assert everything.entries[0] == entry(tree, ".hidden", ".hidden")
    assert everything.entries[5] == entry(tree, ".env", ".env", kind="file")
    assert not everything.truncated


def test_a_subfolder_has_its_parent(tree: Tree) -> None:
    listing = browse(str(tree.root / "beta"), tree.roots, hidden=True)
    assert listing == FolderListing(
        path=str(tree.root / "beta"),
        parent=str(tree.root),
        root=str(tree.root),
        entries=[entry(tree, ".git", "beta/.git"), entry(tree, "deep", "beta/deep")],
    )


def test_a_link_inside_the_roots_lists_its_target(tree: Tree) -> None:
    listing = browse(f"{tree.root}/to-beta/", tree.roots)
    assert listing.path == str(tree.root / "beta")
    assert names(listing) == ["deep"]
    assert browse(f"{tree.root}/./beta", tree.roots).path == str(tree.root / "beta")


def test_none_lists_the_roots(tree: Tree) -> None:
    listing = browse(None, [tree.root2, tree.base / "root-link", tree.base / "gone"])
    assert listing == FolderListing(
        path=None,
        parent=None,
        root=None,
        entries=[
            FolderEntry("root2", str(tree.root2), "dir", hidden=False),
            FolderEntry("root", str(tree.root), "dir", hidden=False),  # resolved again
        ],  # in the configured order; a root that no longer exists is left out
    )


def test_roots_are_resolved_again(tree: Tree) -> None:
    listing = browse(str(tree.base / "root-link" / "Alpha"), [tree.base / "root-link"])
    assert listing.path == str(tree.root / "Alpha")
    assert listing.root == str(tree.root)
    assert listing.parent == str(tree.root)


def test_nested_roots_report_the_outermost(tree: Tree) -> None:
    listing = browse(str(tree.root / "beta" / "deep"), [tree.root / "beta", tree.root])
    assert listing.root == str(tree.root)
    assert listing.parent == str(tree.root / "beta")
    assert browse(str(tree.root / "beta"), [tree.root / "beta"]).parent is None


def test_limit_truncates(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"d{i}").mkdir()
    listing = browse(str(tmp_path), [tmp_path], limit=3)
    assert listing.truncated
    assert len(listing.entries) == 3
    assert names(listing) == sorted(names(listing))
    assert set(names(listing)) <= {f"d{i}" for i in range(10)}
    assert not browse(str(tmp_path), [tmp_path], limit=10).truncated
    with pytest.raises(BadRequest) as caught:
        browse(str(tmp_path), [tmp_path], limit=0)
    assert caught.value.code == "bad_limit"


async def test_browse_async(tree: Tree) -> None:
    assert await browse_async(str(tree.root), tree.roots) == browse(str(tree.root), tree.roots)
    with pytest.raises(Forbidden):
        await browse_async(str(tree.outside), tree.roots)


# -- refusals --------------------------------------------------------------------------------


def test_dot_dot_is_refused_even_inside_a_root(tree: Tree) -> None:
    assert (tree.root / "beta" / ".." / "Alpha").is_dir()  # it would resolve inside the root
    for path in (
        f"{tree.root}/beta/../Alpha",
        f"{tree.root}/..",
        f"{tree.root}/beta/..",
        f"{tree.root}/../outside",
    ):
        refusal(BadRequest, "bad_path", path, tree.roots)


def test_malformed_paths_are_refused(tree: Tree) -> None:
    for path in ("", "beta", "./beta", "~/beta", f"{tree.root}/beta\x00"):
        refusal(BadRequest, "bad_path", path, tree.roots)


def test_escapes_and_outside_paths_are_not_allowed(tree: Tree) -> None:
    for path in (
        tree.root / "escape",
        tree.root / "escape" / "secret",
        tree.root / "escape-file",
        tree.outside,
        tree.outside / "missing",  # no hint whether it exists
        tree.base,
        Path("/"),
    ):
        refusal(Forbidden, "path_not_allowed", str(path), tree.roots)


def test_missing_and_non_folders(tree: Tree) -> None:
    for path in ("missing", "beta/missing", "broken", "loop"):
        refusal(NotFound, "no_such_folder", str(tree.root / path), tree.roots)
    for path in ("a.txt", "to-file", "gamma/.git"):
        refusal(BadRequest, "not_a_directory", str(tree.root / path), tree.roots)


def test_an_unreadable_folder(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(path: str) -> NoReturn:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "scandir", denied)  # as root, chmod 000 would not stop us
    message = refusal(Forbidden, "unreadable", str(tree.root / "Alpha"), tree.roots)
    assert message == f"cannot read {tree.root / 'Alpha'}: Permission denied"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_an_unreadable_folder_for_real(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        refusal(Forbidden, "unreadable", str(locked), [tmp_path])
    finally:
        locked.chmod(0o700)


# -- recent folders --------------------------------------------------------------------------


def test_recent_folders_group_order_and_filter(tree: Tree) -> None:
    uses = [
        (str(tree.root / "Alpha"), 10.0),
        (str(tree.root / "beta"), 30.0),
        (str(tree.root / "Alpha"), 20.0),
        (str(tree.root / "to-beta"), 25.0),  # the same folder through a link
        (str(tree.root / "vanished"), 40.0),
        (str(tree.outside), 50.0),
        (str(tree.root / "escape"), 55.0),
        (str(tree.root / "a.txt"), 60.0),
        ("relative/path", 70.0),
        (str(tree.root2 / "only"), 5.0),
    ]
    assert recent_folders(uses, tree.roots) == [
        RecentFolder(str(tree.root / "beta"), 30.0, 2),
        RecentFolder(str(tree.root / "Alpha"), 20.0, 2),
        RecentFolder(str(tree.root2 / "only"), 5.0, 1),
    ]
    assert recent_folders(uses, tree.roots, limit=1) == [
        RecentFolder(str(tree.root / "beta"), 30.0, 2)
    ]
    assert recent_folders(uses, [tree.root2]) == [RecentFolder(str(tree.root2 / "only"), 5.0, 1)]


def test_recent_folders_forget_deleted_folders(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    uses = [(str(project), 1.0)]
    assert recent_folders(uses, [tmp_path]) == [RecentFolder(str(project), 1.0, 1)]
    project.rmdir()
    assert recent_folders(uses, [tmp_path]) == []


async def test_recent_folders_async(tree: Tree) -> None:
    uses = iter([(str(tree.root / "Alpha"), 1.0)])
    assert await recent_folders_async(uses, tree.roots) == [
        RecentFolder(str(tree.root / "Alpha"), 1.0, 1)
    ]


# -- the containment property ----------------------------------------------------------------

SEGMENTS = [
    "Alpha", "beta", "deep", ".git", ".hidden", "a.txt", "", ".", "..",
    "escape", "escape-file", "to-beta", "to-file", "broken", "loop", "missing",
]  # fmt: skip


def listing_or_refusal(
    path: str, roots: list[Path], *, hidden: bool, files: bool
) -> FolderListing | ClientError:
    try:
        return browse(path, roots, hidden=hidden, files=files)
    except ClientError as exc:
        return exc


def inside(path: str, roots: list[Path]) -> bool:
    return any(Path(path).is_relative_to(root) for root in roots)


@settings(max_examples=300, deadline=None)
@given(
    segments=st.lists(st.sampled_from(SEGMENTS), max_size=6),
    from_root2=st.booleans(),
    hidden=st.booleans(),
    files=st.booleans(),
)
def test_browse_never_leaves_the_roots(
    tree: Tree, segments: list[str], from_root2: bool, hidden: bool, files: bool
) -> None:
    start = tree.root2 if from_root2 else tree.root
    path = "/".join([str(start), *segments])
    listing = listing_or_refusal(path, tree.roots, hidden=hidden, files=files)
    if isinstance(listing, ClientError):
        assert listing.code in {
            "bad_path", "path_not_allowed", "no_such_folder", "not_a_directory", "unreadable",
        }  # fmt: skip
        assert listing.code == "bad_path" or ".." not in segments
        return
    assert ".." not in segments
    assert listing.path is not None and inside(listing.path, tree.roots)
    assert listing.root in {str(tree.root), str(tree.root2)}
    assert listing.parent is None or inside(listing.parent, tree.roots)
    for item in listing.entries:
        assert inside(item.path, tree.roots)
        assert item.path == os.path.realpath(item.path)
        assert files or item.kind == "dir"
        assert hidden or not item.hidden
