"""Packaging and the single entry point: a quiet build, --version, every command in emofuse --help."""

import configparser
import subprocess
import sys
from pathlib import Path

from emofuse import __version__, cli

ROOT = Path(__file__).resolve().parent.parent


def test_emofuse_help_lists_every_command_and_version(capsys):
    try:
        cli.main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    for name in list(cli.STAGE_COMMANDS) + ["demo", "info", "store", "corpus"]:
        assert f"\n    {name}" in out, name
    try:
        cli.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"emofuse {__version__}"


def test_every_stage_command_is_a_console_script_and_a_subcommand():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts["emofuse"] == "emofuse.cli:main"
    for name in cli.STAGE_COMMANDS:
        assert scripts[name] == f"emofuse.cli:{name.replace('-', '_')}"
        r = subprocess.run([sys.executable, "-m", "emofuse", name, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: {name}"), r.stderr


def test_build_prints_no_package_would_be_ignored_and_ships_the_data(tmp_path):
    import shutil

    src = tmp_path / "src"   # a copy: the build writes build/ and *.egg-info beside setup.cfg
    shutil.copytree(ROOT / "emofuse", src / "emofuse", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                        str(tmp_path), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "would be ignored" not in r.stdout + r.stderr
    import zipfile
    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "emofuse/specs/demo.yaml" in names and "emofuse/data/demo/README.txt" in names
    assert sum(n.startswith("emofuse/data/demo/Session1/") for n in names) > 50
    assert not any(n.startswith("tests/") for n in names)
