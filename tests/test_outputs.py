"""outputs.py: staged folders appear whole or not at all, leftovers of dead runs go, umask."""
import os
import stat
from pathlib import Path

import pytest

import outputs
from cli import PipelineError


def dead_pid():
    """A process id no process has: above the kernel's limit."""
    with open("/proc/sys/kernel/pid_max") as f:
        return int(f.read()) + 7


def test_published_folder_replaces_the_old_one_whole(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    (final / "marker").write_text("")
    with outputs.staged_output(final, "marker") as staging:
        (staging / "new.txt").write_text("new")
        (staging / "marker").write_text("")
        assert not (final / "new.txt").exists()       # invisible until the end
    assert sorted(p.name for p in final.iterdir()) == [".marker.files", "marker", "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_an_error_leaves_the_old_folder_and_no_staging(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "marker").write_text("kept")
    with pytest.raises(RuntimeError):
        with outputs.staged_output(final, "marker") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError
    assert [p.name for p in final.iterdir()] == ["marker"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_merge_adds_files_and_leaves_the_others(tmp_path):
    final = tmp_path / "data"
    (final / "src").mkdir(parents=True)
    (final / "src" / "mine.png").write_text("mine")
    with outputs.staged_output(final, merge=True) as staging:
        (staging / "src").mkdir()
        (staging / "src" / "new.png").write_text("new")
    assert sorted(p.name for p in (final / "src").iterdir()) == ["mine.png", "new.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_foreign_folder_is_not_replaced(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not written by this script"):
        with outputs.staged_output(tmp_path, "marker"):
            pass
    with pytest.raises(PipelineError, match="is a file"):
        with outputs.staged_output(tmp_path / "keep.txt", "marker"):
            pass


def test_published_folder_and_files_follow_the_umask(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "UMASK", 0o027)
    with outputs.staged_output(tmp_path / "out") as staging:
        (staging / "a.txt").write_text("a")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    outputs.atomic_write_text(tmp_path / "b.txt", "b")
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def test_leftovers_of_dead_runs_go_and_live_ones_stay(tmp_path):
    name = "out"
    dead = tmp_path / f".{name}.tmp-{outputs._HOST}-{dead_pid()}-abc"
    live = tmp_path / f".{name}.tmp-{outputs._HOST}-{os.getpid()}-abc"
    other_host = tmp_path / f".{name}.tmp-00000000-{dead_pid()}-abc"
    dead_file = tmp_path / f".x.png.tmp-{outputs._HOST}-{dead_pid()}-abc.png"
    for folder in (dead, live, other_host):
        folder.mkdir()
        (folder / "f").write_text("")
    dead_file.write_text("")
    with outputs.staged_output(tmp_path / name):
        pass
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([name, live.name, other_host.name])


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    outputs.write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    with pytest.raises(ValueError):     # NaN is refused, and the old file stays
        outputs.write_json(tmp_path / "a.json", {"x": float("nan")})
    assert (tmp_path / "a.json").read_text().strip() == '{\n  "x": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_name_that_fits_gets_a_temporary_that_fits_and_its_run_leaves_none(tmp_path):
    for name in ("a" * 255, "\u00e9" * 124 + "a.json", "b.keras"):
        outputs.atomic_write_text(tmp_path / name, "x")
        assert [p.name for p in tmp_path.iterdir()] == [name]
        (tmp_path / name).unlink()
    with outputs.staged_output(tmp_path / ("d" * 255)) as staging:
        (staging / "f").write_text("x")
    assert (tmp_path / ("d" * 255) / "f").read_text() == "x"


STAGE_IN = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import outputs
with outputs.staged_output(Path(sys.argv[1])) as staging:
    (staging / "f").write_text("x")
outputs.atomic_write_text(Path(sys.argv[1]) / "g", "y")
"""


@pytest.mark.parametrize("name", ["d\u00e4t\u00e4", "Probe\u2013\u03b1"])
def test_a_non_ascii_folder_is_written_in_a_locale_that_is_not_utf8(name, tmp_path):
    """LANG=en_US.ISO-8859-1 on an old cluster, or C with Python's UTF-8 mode off: the file
    system encoding cannot hold every character that the name's UTF-8 bytes decode to."""
    import subprocess
    import sys
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    root = str(Path(outputs.__file__).parent)
    result = subprocess.run([sys.executable, "-c", STAGE_IN.format(root=root), tmp_path / name],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / name / "f").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["f", "g"]


def test_a_held_work_folder_is_refused_to_a_second_run_and_freed_after(tmp_path):
    """Two gen_img_aug.py runs on one folder mixed their test/ and train/; the lock is the
    operating system's, so a killed holder frees it (here: a child process that exits)."""
    import subprocess
    import sys
    from outputs import work_lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
         "from outputs import work_lock; lock = work_lock(sys.argv[2], 'first.py'); "
         "lock.__enter__(); print('held', flush=True); time.sleep(60)",
         str(Path(__file__).resolve().parents[1]), str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(PipelineError, match=r"is in use by first.py \(process "
                                                rf"{holder.pid}\)"):
            with work_lock(tmp_path, "second.py"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with work_lock(tmp_path, "second.py"):
        with pytest.raises(PipelineError, match="second.py"):
            with work_lock(tmp_path, "third.py"):    # one process, two handles: also refused
                pass
    # emptied on release: a finished run's folder names no holder and hashes alike each run
    assert (tmp_path / outputs.LOCK_NAME).read_text() == ""


def test_trainings_share_the_work_folder_that_its_writers_hold_alone(tmp_path):
    """gen_img_aug.py cutting the patches again under a training stopped it with
    TensorFlow's traceback; two trainings on one work folder are fine."""
    from outputs import work_lock, work_read_lock
    (tmp_path / outputs.LOCK_NAME).touch()      # as gen_img_aug.py leaves it
    with work_read_lock(tmp_path), work_read_lock(tmp_path):
        with pytest.raises(PipelineError, match="is in use by a training that reads its "
                                                "patches; wait for it to finish"):
            with work_lock(tmp_path, "gen_img_aug.py"):
                pass
    with work_lock(tmp_path, "pre_processing.py"):
        with pytest.raises(PipelineError, match=r"is being written by pre_processing.py "
                                                r"\(process \d+\)"):
            with work_read_lock(tmp_path):
                pass
    with work_lock(tmp_path, "gen_img_aug.py"):     # both released
        pass


def test_a_folder_reached_by_a_second_path_is_the_same_folder(tmp_path, monkeypatch):
    """A bind mount (or other letter case on macOS) gives one folder two paths that resolve()
    does not join; the file system's identity of the folder does."""
    (tmp_path / "work" / "test" / "data").mkdir(parents=True)
    (tmp_path / "mount").mkdir()
    real_identity = outputs.folder_identity

    def identity(path):     # "mount" stands for a second path to work/test
        path = Path(path)
        return real_identity(tmp_path / "work" / "test" if path == tmp_path / "mount" else path)
    monkeypatch.setattr(outputs, "folder_identity", identity)
    assert outputs.same_or_inside(tmp_path / "mount" / "data", tmp_path / "work" / "test")
    assert outputs.same_or_inside(tmp_path / "work" / "test", tmp_path / "work" / "test")
    assert not outputs.same_or_inside(tmp_path / "work", tmp_path / "work" / "test")
    assert not outputs.same_or_inside(tmp_path / "none", tmp_path / "work")


def published_with_marker(final):
    with outputs.staged_output(final, "marker") as staging:
        (staging / "mask.png").write_text("mask")
        (staging / "marker").write_text("")


def test_files_copied_in_with_old_times_stop_a_rerun(tmp_path):
    """cp -p, mv, rsync -a and unzip keep a file's old modification time: it is told by its
    name, which the folder's manifest does not list, or a rerun would delete it."""
    final = tmp_path / "out"
    published_with_marker(final)
    long_ago = (final / "marker").stat().st_mtime - 3600
    (final / "notes").mkdir()
    for path in (final / "photo.png", final / "notes" / "plan.txt"):
        path.write_text("mine")
        os.utime(path, (long_ago, long_ago))
    with pytest.raises(PipelineError, match=r"changed or added after .*notes.*photo\.png"):
        with outputs.staged_output(final, "marker"):
            pass
    assert (final / "photo.png").read_text() == "mine"


def test_what_file_browsers_leave_and_new_permissions_do_not_stop_a_rerun(tmp_path):
    """Finder's .DS_Store also moves the time of the folder it lands in; chmod -R for
    colleagues moves every file's inode time."""
    final = tmp_path / "out"
    with outputs.staged_output(final, "marker") as staging:
        (staging / "labelme").mkdir()
        (staging / "labelme" / "a.json").write_text("{}")
        (staging / "marker").write_text("")
    later = (final / "marker").stat().st_mtime + 60
    for folder in (final, final / "labelme"):
        (folder / ".DS_Store").write_text("")
        os.utime(folder / ".DS_Store", (later, later))
        os.utime(folder, (later, later))
    os.chmod(final / "labelme" / "a.json", 0o600)
    published_with_marker(final)
    assert sorted(p.name for p in final.iterdir()) == [".marker.files", "marker", "mask.png"]


def test_a_file_added_while_the_run_works_is_kept_and_the_run_stops(tmp_path):
    final = tmp_path / "out"
    published_with_marker(final)
    with pytest.raises(PipelineError, match=r"changed or added after .*fixed\.json"):
        with outputs.staged_output(final, "marker") as staging:
            (final / "fixed.json").write_text("{}")     # a correction saved meanwhile
            (staging / "marker").write_text("")
    assert (final / "fixed.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_marker_written_first_is_made_the_newest_file(tmp_path):
    """get_contour opens its table first and closes it last: what it wrote in between, a slow
    overview among them, is its own, not a later change."""
    final = tmp_path / "out"
    with outputs.staged_output(final, "marker") as staging:
        (staging / "marker").write_text("")
        long_ago = (staging / "marker").stat().st_mtime - 60
        os.utime(staging / "marker", (long_ago, long_ago))
        (staging / "overview.png").write_text("written after the marker")
    published_with_marker(final)


def test_an_output_given_as_a_link_stays_a_link(tmp_path):
    target = tmp_path / "big" / "results"
    published_with_marker(target)
    link = tmp_path / "out"
    link.symlink_to(target)
    with outputs.staged_output(link, "marker") as staging:
        (staging / "new.png").write_text("new")
        (staging / "marker").write_text("")
    assert link.is_symlink() and (target / "new.png").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["results"]


def test_a_folder_the_system_will_not_let_us_write_is_one_line(tmp_path, monkeypatch):
    def refused(**kwargs):
        raise OSError(30, "Read-only file system", kwargs["dir"])
    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refused)
    with pytest.raises(PipelineError, match="cannot write .*out: Read-only file system"):
        with outputs.staged_output(tmp_path / "out"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_the_marker_edited_after_the_run_stops_a_rerun(tmp_path):
    """objects.csv (get_contour's marker) saved again from a spreadsheet, or predict.json with
    a note added: the marker is the file most often edited, and was measured against itself."""
    final = tmp_path / "out"
    published_with_marker(final)
    later = (final / "marker").stat().st_mtime + 60
    (final / "marker").write_text("edited by hand")
    os.utime(final / "marker", (later, later))
    with pytest.raises(PipelineError, match=r"changed or added after .*marker"):
        with outputs.staged_output(final, "marker"):
            pass
    assert (final / "marker").read_text() == "edited by hand"


def test_a_second_run_into_an_output_being_written_is_refused(tmp_path):
    """Two predictions into one --output at once both said they wrote it, and the first
    one's result vanished."""
    out = tmp_path / "pred"
    with outputs.output_lock(out, "predict_lovasz_loss.py"):
        with pytest.raises(PipelineError, match=r"pred is being written by "
                                                r"predict_lovasz_loss.py \(process \d+\)"):
            with outputs.output_lock(out, "get_contour.py"):
                pass
    with outputs.output_lock(out, "get_contour.py"):      # released at the end
        pass
    assert list(tmp_path.iterdir()) == []                   # and the file it made removed
