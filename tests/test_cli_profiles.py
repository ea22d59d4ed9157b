"""`charger-gateway profiles list|show`: what an installer sees of the device profiles, and its exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.profile_loader import builtin_profile_dir

BUILTIN = sorted(p.stem for p in builtin_profile_dir().glob("*.yaml"))


def test_list_shows_every_builtin_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == BUILTIN
    assert any(line.startswith("heidelberg-energy-control") and " charger " in line and " rtu " in line for line in lines)


def test_list_json_and_a_site_directory_that_patches_and_breaks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(builtin_profile_dir() / "heidelberg-energy-control.yaml", site)
    (site / "broken.yaml").write_text("name: broken\nkind: charger\n")
    assert main(["profiles", "list", "--json", "--dir", str(site)]) == 1  # one profile is broken
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["heidelberg-energy-control"]["file"] == str(site / "heidelberg-energy-control.yaml"), "the site's copy wins"
    assert "broken.yaml:" in rows["broken"]["error"]
    assert rows["bender-cc613"]["kind"] == "charger" and rows["bender-cc613"]["framing"] == "tcp"


def test_show_prints_the_profile_file_and_refuses_unknown_or_broken(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "show", "bender-cc613"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# ") and "name: bender-cc613" in out
    assert main(["profiles", "show", "no-such-box"]) == 1
    assert "known: " in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text("name: broken\nkind: charger\n")
    assert main(["profiles", "show", "broken", "--dir", str(tmp_path)]) == 78
    assert "broken.yaml:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["profiles", "show"])
