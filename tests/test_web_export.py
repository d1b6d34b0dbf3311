"""``sidecode-trio web export DIR`` and ``serve --web-origin`` (issue 17 #4), without a browser
(tests/test_rtc_browser.py loads the bundle from another origin)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecode_trio.cli import main
from sidecode_trio.config import DaemonConfig, load_config
from sidecode_trio.errors import ConfigError
from sidecode_trio.web import INDEX, load_files
from sidecode_trio.web.export import MARKER, export

from helpers import running_daemon


def test_the_bundle_is_the_app_as_served_with_its_policy_in_a_meta(tmp_path: Path) -> None:
    target = tmp_path / "site"
    written = export(target)
    served = load_files()
    assert sorted(written) == sorted(served)
    for name, found in served.items():
        body = (target / name).read_bytes()
        if name == INDEX:
            assert b'<meta http-equiv="Content-Security-Policy"' in body
            assert b"connect-src 'self' https: wss:" in body and b"frame-ancestors" not in body
            assert b"script-src 'self';" in body  # still no inline script, no eval
        else:
            assert body == found.body, name
    marker = json.loads((target / MARKER).read_text())
    assert marker["files"] == sorted(served) and marker["build"] == served[INDEX].build
    assert (target / ".nojekyll").exists()
    export(target)  # an earlier export may be refreshed in place


def test_a_directory_with_other_files_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigError, match="not empty and holds no earlier export"):
        export(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["thesis.tex"]


async def test_the_bundle_holds_no_secret_of_a_daemon(
    make_config: Callable[..., DaemonConfig], tmp_path: Path
) -> None:
    async with running_daemon(make_config(https=True)) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "admin"})).json()
        assert main(["web", "export", str(tmp_path / "site")]) == 0
    secrets = [
        owner.handle.token,
        offer["payload"]["secret"],
        offer["payload"]["pk"],
        offer["payload"]["cert"],
        owner.handle.fingerprint,
    ]
    for path in (tmp_path / "site").rglob("*"):
        if path.is_file():
            text = path.read_bytes()
            found = [s for s in secrets if s.encode() in text]
            assert not found, (path, found)


async def test_pairing_links_open_the_web_origin(
    make_config: Callable[..., DaemonConfig],
) -> None:
    config = make_config(web_origin="https://me.github.io/sidecode/")
    async with running_daemon(config) as owner:
        offer = (await owner.http.post("/v1/pairings", json={"scope": "chat"})).json()
    assert offer["web_link"].startswith("https://me.github.io/sidecode/#pair=")
    assert offer["payload"]["http"] == [owner.handle.url]  # the daemon's address rides inside


@pytest.mark.parametrize(
    "origin", ["http://me.github.io/", "https://me.github.io/#x", "ftp://h/", "https://"]
)
def test_a_web_origin_must_be_https(tmp_path: Path, origin: str) -> None:
    with pytest.raises(ConfigError, match=r"bad value @ \$\.web_origin"):
        load_config({"state_dir": tmp_path, "web_origin": origin})
    assert load_config({"state_dir": tmp_path, "web_origin": "http://127.0.0.1:9/"}).web_origin
