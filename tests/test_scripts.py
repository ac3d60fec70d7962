"""README's two commands, setup_env.sh, run_demo.sh and run_tests.sh, on copies in a temporary
folder: what each says where it cannot go on, without installing or training anything."""
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not shutil.which("bash"), reason="the scripts are bash")

# what setup_env.sh runs before its Python check, and nothing more: no python3 among them
TOOLS = ("bash", "dirname", "flock", "rm", "touch")


def tool_dir(tmp_path, python3=None):
    """A folder for PATH holding the tools the scripts need, and python3 only if given (the
    text of a script standing in for it)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in TOOLS:
        if shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    if python3 is not None:
        (bin_dir / "python3").write_text("#!/bin/sh\n" + python3)
        (bin_dir / "python3").chmod(0o755)
    return bin_dir


def checkout(tmp_path, *names):
    repo = tmp_path / "repo with spaces"
    repo.mkdir()
    for name in names:
        shutil.copy(ROOT / name, repo / name)
    return repo


@pytest.mark.parametrize("python3", [
    None,                                                       # no python3 at all
    '[ "$1" = -V ] && echo "Python 3.8.18" || exit 1\n',         # one too old
    'echo "pyenv: python3: command not found" >&2; echo >&2\n'  # a pyenv shim without one
    'echo "The python3 command exists in these Python versions:" >&2; exit 127\n',
], ids=["missing", "too old", "pyenv shim"])
def test_setup_without_a_python3_that_fits_says_so_in_one_line(tmp_path, python3):
    repo = checkout(tmp_path, "setup_env.sh", "requirements.txt")
    env = {"PATH": str(tool_dir(tmp_path, python3)), "HOME": str(tmp_path)}
    done = subprocess.run(["bash", "-c", 'source "$0"', repo / "setup_env.sh"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: needs Python 3.11 or newer; python3 here is ")
    assert ("missing" if python3 is None else "python3" if "pyenv" in python3
            else "Python 3.8.18") in done.stderr
    assert not (repo / ".venv").exists()


def stub_setup(repo, python):
    """setup_env.sh's part that run_demo.sh and run_tests.sh rely on, with a python that runs
    the given shell text instead of the pipeline."""
    (repo / "setup_env.sh").write_text('set -euo pipefail\ncd "$(dirname "${BASH_SOURCE[0]}")"\n'
                                       'export PATH="$PWD/bin:$PATH"\n')
    (repo / "bin").mkdir()
    (repo / "bin" / "python").write_text("#!/bin/sh\n" + python)
    (repo / "bin" / "python").chmod(0o755)


@pytest.mark.skipif(not shutil.which("flock"), reason="run_demo.sh holds its folder by flock")
def test_a_second_demo_on_the_same_work_folder_is_refused(tmp_path):
    """The second would cut the patches again under the first one's training, which then
    stopped with TensorFlow's traceback."""
    repo = checkout(tmp_path, "run_demo.sh")
    stub_setup(repo, f'echo "$*" >> "{tmp_path}/steps"; exit 3\n')
    work = tmp_path / "work"
    env = {**os.environ, "WORK_DIR": str(work), "EPOCHS": "1"}
    demo = ["bash", repo / "run_demo.sh"]
    work.mkdir()
    held = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)        # as a first demo running there holds it
        refused = subprocess.run(demo, env=env, capture_output=True, text=True, cwd="/")
    finally:
        os.close(held)
    assert refused.returncode == 1
    assert refused.stderr == (f"error: {work} is in use by another run_demo.sh; wait for it "
                              "to finish, or set another WORK_DIR\n")
    assert not (tmp_path / "steps").exists()
    # once the first is done, the same command runs its steps (the stub's first one fails)
    again = subprocess.run(demo, env=env, capture_output=True, text=True, cwd="/")
    assert again.returncode == 3
    assert (tmp_path / "steps").read_text().startswith("labelme_to_label.py ")


@pytest.mark.parametrize("workers", ["abc", "-1", "2 3"])
def test_run_tests_refuses_a_test_workers_that_is_no_number(tmp_path, workers):
    repo = checkout(tmp_path, "run_tests.sh")
    stub_setup(repo, f'echo "$*" > "{tmp_path}/ran"\n')
    done = subprocess.run(["bash", repo / "run_tests.sh"], capture_output=True, text=True,
                          env={**os.environ, "TEST_WORKERS": workers})
    assert done.returncode == 2
    assert done.stderr == ("error: TEST_WORKERS must be a number of test processes (0 runs in "
                           f"this one) or auto; got '{workers}'\n")
    assert not (tmp_path / "ran").exists()


def test_run_tests_passes_test_workers_and_arguments_to_pytest(tmp_path):
    repo = checkout(tmp_path, "run_tests.sh")
    stub_setup(repo, f'echo "$*" > "{tmp_path}/ran"\n')
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").touch()
    subprocess.run(["bash", repo / "run_tests.sh", "tests/test_x.py::test_y", "-k", "stack"],
                   check=True, cwd=tmp_path, env={**os.environ, "TEST_WORKERS": "auto"})
    assert (tmp_path / "ran").read_text() == (
        f"-m pytest -q -n auto --dist loadfile {tmp_path}/tests/test_x.py::test_y -k stack\n")
