"""Packaging (issue 18): the wheel and the sdist, built from a copy of the tree, install into a
fresh venv with only the runtime dependencies, and ``serve --demo`` works from there.

Built from a ``git archive`` copy (committed files plus uncommitted changes to them), never in
the tree: a build writes ``build/`` and ``*.egg-info`` where it runs (FIELD-NOTES.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = {"pytest", "hypothesis", "ruff", "mypy"}
DEMO = "iqn.2026-11.org.gluster-iscsi:demo"


def _clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH (it would import this tree, not the installed package), no PURE flag."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "GLUSTER_ISCSI_PURE", "VIRTUAL_ENV", "NOTIFY_SOCKET")}
    env.update(extra)
    return env


def _run(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 900) -> str:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env or _clean_env(),
                       capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def tree_copy(dest: Path) -> Path:
    """The tree as git has it (with uncommitted changes to tracked files) in ``dest``."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the packaging tests build from a git checkout")
        pytest.skip("not a git checkout")
    rev = _run("git", "stash", "create", cwd=ROOT).strip() or "HEAD"
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def fresh_venv(path: Path) -> Path:
    _run(sys.executable, "-m", "venv", path)
    return path / "bin"


def _notify_socket(tmp: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(tmp / "notify"))
    s.settimeout(60)
    return s


def serve_demo_and_list(bin_dir: Path, tmp: Path) -> str:
    """``serve --demo`` from ``bin_dir``; once it says READY, ``iscsi-ls -s`` lists the demo."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.mkdir(parents=True, exist_ok=True)
    notify = _notify_socket(tmp)
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen(
        [bin_dir / "gluster-iscsi", "serve", "--demo", "--state-dir", tmp / "state",
         "--listen", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, env=_clean_env(NOTIFY_SOCKET=str(tmp / "notify")))
    try:
        while b"READY=1" not in notify.recv(4096):
            pass
        out = _run("iscsi-ls", "-s", f"iscsi://127.0.0.1:{port}", timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(60)
        notify.close()
        log.close()
    assert rc == 0, (tmp / "serve.log").read_text()
    return out


def installed(bin_dir: Path) -> set[str]:
    rows = json.loads(_run(bin_dir / "python", "-m", "pip", "list", "--format=json"))
    return {r["name"].lower() for r in rows}


@pytest.mark.integration
def test_wheel_and_sdist_install_in_a_fresh_venv_and_serve_the_demo(tmp_path):
    if shutil.which("iscsi-ls") is None:
        pytest.fail("iscsi-ls missing: scripts/install installs libiscsi-bin")
    before = sorted(p.name for p in [*ROOT.iterdir(), *(ROOT / "src").iterdir()])
    src = tree_copy(tmp_path / "src")
    build_bin = fresh_venv(tmp_path / "buildenv")
    _run(build_bin / "pip", "install", "-q", "build")
    # sdist first, then the wheel built from the unpacked sdist (what `python -m build` does):
    # so the sdist is proven to hold what a build needs. Pure Python here: fast, and the
    # compiled build is the sdist install below.
    _run(build_bin / "python", "-m", "build", "--outdir", tmp_path / "dist", src,
         env=_clean_env(GLUSTER_ISCSI_PURE="1"))
    (sdist,) = (tmp_path / "dist").glob("gluster_iscsi-*.tar.gz")
    (wheel,) = (tmp_path / "dist").glob("gluster_iscsi-*.whl")

    names = tarfile.open(sdist).getnames()
    top = names[0].split("/")[0]
    for need in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in",
                 "src/gluster_iscsi/systemd/gluster-iscsi.service",
                 "src/gluster_iscsi/cli/serve.py", "docs/OPERATIONS.md",
                 "src/gluster_iscsi/backstore/gfapi/_aio.c"):
        assert f"{top}/{need}" in names, need
    wnames = zipfile.ZipFile(wheel).namelist()
    assert "gluster_iscsi/systemd/gluster-iscsi.service" in wnames
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wnames)
    assert wheel.name.endswith("-py3-none-any.whl")  # pure build: no extension, any platform
    assert not any(n.startswith("tests/") for n in wnames)

    for kind, artifact in (("wheel", wheel), ("sdist", sdist)):
        bin_dir = fresh_venv(tmp_path / f"venv-{kind}")
        _run(bin_dir / "pip", "install", "-q", artifact)
        have = installed(bin_dir)
        assert {"gluster-iscsi", "click", "crc32c"} <= have
        assert not have & TEST_ONLY, f"{kind} install pulled {have & TEST_ONLY}"
        # the package data made it: the unit renders with this venv's command
        unit = _run(bin_dir / "gluster-iscsi", "systemd", "show", "--state-dir", tmp_path / "s")
        assert f"ExecStart={bin_dir / 'gluster-iscsi'} serve" in unit
        out = serve_demo_and_list(bin_dir, tmp_path / f"run-{kind}")
        assert DEMO in out and "Lun:1" in out, out
        compiled = json.loads(_run(bin_dir / "python", "-c",
                                   "import gluster_iscsi as g, json; "
                                   "from gluster_iscsi.server.gfaio import supported; "
                                   "print(json.dumps([g.compiled_modules(), g.DATA_PATH_MODULES, "
                                   "supported()]))"))
        if kind == "sdist" and shutil.which("gcc") and Path(
                sysconfig_include(bin_dir), "Python.h").exists():
            # built on this host from the sdist: mypyc compiled the data path, and the C
            # module of asynchronous gfapi calls is there (its source is in the sdist)
            assert compiled[0] == compiled[1] and compiled[2]
        elif kind == "wheel":
            assert compiled[0] == [] and not compiled[2]
    # nothing was built in the tree itself (no build/, no *.egg-info)
    assert sorted(p.name for p in [*ROOT.iterdir(), *(ROOT / "src").iterdir()]) == before


def sysconfig_include(bin_dir: Path) -> str:
    return _run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['include'])").strip()


# ---------------------------------------------------------------------------- setup.py alone

_PROBE = """
import sys, setuptools
got = {}
setuptools.setup = lambda **kw: got.update(kw)
MODE
sys.argv = ["setup.py"]
exec(compile(open("setup.py").read(), "setup.py", "exec"), {"__name__": "__main__"})
print("EXTS", [e.name for e in got["ext_modules"]])
"""


@pytest.mark.parametrize("mode, said", [
    ("sys.modules['mypyc'] = None; sys.modules['mypyc.build'] = None", "mypyc not available"),
    ("import mypyc.build\n"
     "def boom(*a, **k): raise SystemExit('mypyc: error')\n"
     "mypyc.build.mypycify = boom", "WARNING: mypyc failed"),
])
def test_setup_py_falls_back_to_pure_python_without_mypyc(tmp_path, mode, said):
    pytest.importorskip("mypyc")
    src = tree_copy(tmp_path / "src")
    r = subprocess.run([sys.executable, "-c", _PROBE.replace("MODE", mode)], cwd=src,
                       env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    # the data path stays Python; the hand-written C module (gfapi completions) is still built
    assert said in r.stdout and "EXTS ['gluster_iscsi.backstore.gfapi._aio']" in r.stdout, \
        r.stdout


@pytest.mark.integration
def test_without_a_c_compiler_the_sdist_builds_and_runs_pure_python(tmp_path):
    """mypyc translates the data path, the C compiler fails (CC=/bin/false): the build warns,
    the wheel has no extension, and the installed package runs the .py modules."""
    src = tree_copy(tmp_path / "src")
    build_bin = fresh_venv(tmp_path / "buildenv")
    _run(build_bin / "pip", "install", "-q", "build")
    _run(build_bin / "python", "-m", "build", "--sdist", "--outdir", tmp_path / "dist", src)
    (sdist,) = (tmp_path / "dist").glob("gluster_iscsi-*.tar.gz")
    r = subprocess.run([build_bin / "pip", "wheel", "-v", "--no-deps", "-w", tmp_path / "whl",
                        sdist], env=_clean_env(CC="/bin/false", LDSHARED="/bin/false"),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert "building extension" in said and "failed" in said  # setuptools' optional-ext warning
    (wheel,) = (tmp_path / "whl").glob("gluster_iscsi-*.whl")
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so")]
    bin_dir = fresh_venv(tmp_path / "venv")
    _run(bin_dir / "pip", "install", "-q", wheel)
    out = _run(bin_dir / "python", "-c", "import gluster_iscsi as g; print(g.compiled_modules())")
    assert out.strip() == "[]"
    assert "serve" in _run(bin_dir / "gluster-iscsi", "--help")
