"""The security suite again, as an unprivileged user (the server not root):
sandboxes then use the single own-uid mapping of an unprivileged user
namespace, and no cgroup unless one is delegated.

The interpreter of this venv may live under /root (mode 0700), which the
user cannot reach, so the run uses the system's python3 of the same version
and a world-readable copy of the package, its dependencies and the tests.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

import jail

NOBODY = 65534
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _system_python():
    path = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: `make test` installs Debian's python3 for this test")
    return path


@pytest.mark.needs_root
def test_security_suite_passes_as_an_unprivileged_user():
    if os.geteuid() != 0:
        pytest.skip("this run is already unprivileged: the whole suite ran without root")
    python = _system_python()
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        for name in ("jail", "tests"):
            shutil.copytree(os.path.join(ROOT, name), os.path.join(folder, name),
                            ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(os.path.join(ROOT, "harness"), os.path.join(folder, "jail_harness"))
        shutil.copy(os.path.join(ROOT, "pyproject.toml"), folder)
        site = sysconfig.get_path("purelib")
        shutil.copytree(site, os.path.join(folder, "site"), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "__editable__*", "_snippet_jail*.pth"))
        subprocess.run(["chmod", "-R", "a+rX", folder], check=True)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": f"{folder}:{folder}/site", "LANG": "C.UTF-8"}
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
             python, "-m", "pytest", "-p", "no:cacheprovider", "tests/security", "tests/unit/test_launcher.py",
             "-m", "not needs_root"],
            cwd=folder, env=env, capture_output=True, text=True, timeout=600,
        )
    tail = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, tail
    assert "failed" not in result.stdout.splitlines()[-1], tail
    # The run really was unprivileged and really exercised the sandbox.
    assert "uid 65534 (own-uid mapping)" in result.stdout, tail
    passed = int(result.stdout.splitlines()[-1].split(" passed")[0].split()[-1])
    assert passed >= 25, tail
    assert jail.__version__
