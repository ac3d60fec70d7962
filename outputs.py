"""Outputs that appear complete or not at all: atomic files, staged folders published whole,
leftovers of killed runs removed by the next run, permissions from the user's umask."""
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from cli import PipelineError, refuse_file, some_names

# Every temporary file or folder this pipeline makes carries this tag, its host and its process
# id, so a later run can tell the leftovers of a killed run from the work of a live one.
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMP_TAG = re.compile(r"\.tmp-([0-9a-f]{8})-(\d+)-")
_cleaned = set()


def _user_umask():
    """The process's umask, read without changing it (Linux), else by setting it back at once."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _user_umask()


# The bytes one file name may hold on the file systems users have (ext4, XFS, APFS, NTFS).
NAME_MAX = 255
_RANDOM_PART = 8        # what tempfile adds to a prefix


def _temp_prefix(name, suffix=""):
    """The prefix of a temporary entry standing in for `name`. A long name is cut so that the
    entry's own name (prefix, random part, suffix) still fits: a name that fits must never
    fail for its temporary's sake."""
    tag = f".tmp-{_HOST}-{os.getpid()}-"
    room = max(0, NAME_MAX - 1 - len(tag) - _RANDOM_PART - len(os.fsencode(suffix)))
    # Cut by characters, so the name goes back to the file system as it came: its bytes cut
    # and decoded as UTF-8 made characters that a locale of another encoding (latin-1, C
    # without Python's UTF-8 mode) cannot write, and any non-ASCII folder failed there.
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return f".{name}{tag}"


def check_name_fits(file, source):
    """Refuse an output file name longer than a file system allows, before any work is done."""
    size = len(os.fsencode(file))
    if size > NAME_MAX:
        raise PipelineError(f"{source} would write {file}, a name of {size} bytes, over the "
                            f"{NAME_MAX} a file system allows; give its image file a shorter "
                            "name")


def temp_target(name):
    """The name a temporary entry of this pipeline (.<name>.tmp-<host>-<pid>-...) stands in
    for, or None where name is no such entry."""
    found = _TEMP_TAG.search(name) if name.startswith(".") else None
    return name[1:found.start()] if found else None


# What file browsers and file systems leave in any folder (Finder, Explorer, NFS).
SYSTEM_FILES = re.compile(r"\.DS_Store|\._.*|Thumbs\.db|desktop\.ini|\.nfs.*", re.IGNORECASE)


def same_or_inside(inner, outer):
    """Whether folder `inner` is folder `outer` or lies inside it, by the folders' identity on
    disk: a second path to a folder (a link, a bind mount, other letter case on macOS and
    Windows) is the same folder. False where either does not exist."""
    target = folder_identity(outer)
    inner = Path(inner).resolve()
    return target is not None and any(folder_identity(folder) == target
                                      for folder in (inner, *inner.parents))


def folder_identity(path):
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def foreign_entries(folder, writes):
    """The names of what an existing folder holds that a script does not write (a file in
    its place: that file's name): entries whose name fails writes(name), a killed run's
    temporary entry judged by the name it stands in for, what the system leaves passed over."""
    folder = Path(folder)
    if not folder.is_dir():
        return [folder.name] if folder.exists() else []
    return sorted(p.name for p in folder.iterdir() if not SYSTEM_FILES.fullmatch(p.name)
                  and not writes(temp_target(p.name) or p.name))


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder):
    """Delete the temporary files and staging folders that killed runs left in `folder`.

    Only those made on this host by a process that no longer runs; a concurrent run's
    work in progress is left alone. Done once per folder per process.
    """
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _cleaned or not folder.is_dir():
        return
    _cleaned.add(key)
    for entry in folder.iterdir():
        found = _TEMP_TAG.search(entry.name) if entry.name.startswith(".") else None
        if found and found[1] == _HOST and not _process_alive(int(found[2])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def temp_path(path, suffix=None):
    """A fresh, unused temporary file name beside `path` ending in `suffix` (default: the
    path's own; libraries such as Keras pick the format from it); remove_leftovers knows it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path.parent)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path.name, suffix),
                               suffix=suffix)
    os.close(fd)
    return Path(tmp)


def publish_file(tmp, path):
    """Give a finished temporary file ordinary permissions and move it into place."""
    os.chmod(tmp, 0o666 & ~UMASK)
    os.replace(tmp, path)


@contextmanager
def atomic_file(path, suffix=None):
    """A temporary file beside `path` to write (see temp_path for `suffix`), moved into
    place when the block ends, removed if it raises: `path` is whole or untouched."""
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        publish_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data):
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path, text):
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, obj):
    # allow_nan=False: a NaN statistic is an error to report, never a file to write.
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def check_replaceable(final_dir, marker):
    """Refuse to replace an existing folder that this pipeline did not write, or one holding
    what was changed or added after it did.

    A published folder replaces the old one whole, so a user's --output pointing at a folder
    of their own would be lost; a folder holding `marker` (a file the script always writes)
    or an empty one is safe to replace, unless check_unchanged_since finds work of the user's
    in it.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise PipelineError(f"output {final_dir} is a file, not a folder; choose another")
    if final_dir.is_dir() and any(final_dir.iterdir()) and not (final_dir / marker).is_file():
        raise PipelineError(f"output folder {final_dir} exists and was not written by this "
                            f"script (no {marker}); it would be replaced, so choose another")
    check_unchanged_since(final_dir, marker)


# Coarse file-system clocks (FAT: 2 s) must not make a script's own file look changed later.
MTIME_SLACK_S = 2.0


def manifest_name(marker):
    """The hidden list, beside a staged folder's marker, of the files it was published with."""
    return f".{marker}.files"


def _write_manifest(staging, marker):
    """List every file of the finished staging folder, and make the marker its newest file:
    what arrives later is then told by its name, what is edited later by its time."""
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                   if (not p.is_dir() or p.is_symlink()) and p.name != manifest_name(marker))
    (staging / manifest_name(marker)).write_text(json.dumps(files) + "\n", encoding="utf-8")
    if (staging / marker).is_file():
        os.utime(staging / marker)


def _published_paths(final_dir, marker):
    """The files a folder's manifest lists and the folders that hold them; None for a folder
    published before manifests, or whose manifest is gone."""
    try:
        files = json.loads((final_dir / manifest_name(marker)).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(files, list):
        return None
    folders = {parent.as_posix() for name in files for parent in PurePosixPath(name).parents}
    return set(files) | folders


def check_unchanged_since(final_dir, marker):
    """Refuse to replace a folder holding files edited after its `marker` was written, or
    added since (by name: cp -p, mv, rsync -a and unzip keep a file's old time):
    hand-corrected outputs (LabelMe polygons fixed for retraining) or files a user put there
    would be lost with the folder."""
    final_dir = Path(final_dir)
    if not (final_dir / marker).is_file():
        return
    # The manifest is written just before the marker is touched last (_write_manifest), so
    # its time is the publication's: measured from the marker's own time, an edit of the
    # marker itself (objects.csv saved again from a spreadsheet, notes added to
    # predict.json) moved the yardstick with it and was never seen.
    manifest = final_dir / manifest_name(marker)
    reference = manifest if manifest.is_file() else final_dir / marker
    since = reference.stat().st_mtime + MTIME_SLACK_S
    published = _published_paths(final_dir, marker)
    changed = []
    for path in final_dir.rglob("*"):
        name = path.relative_to(final_dir).as_posix()
        if SYSTEM_FILES.fullmatch(path.name) or name == manifest_name(marker):
            continue
        added = published is not None and name not in published
        # A folder's time moves whenever anything, Finder's .DS_Store too, is made in it.
        edited = not path.is_dir() and path.lstat().st_mtime > since
        if added or edited:
            changed.append(name)
    if changed:
        raise PipelineError(f"output folder {final_dir} holds files changed or added after this "
                            f"script wrote it ({some_names(sorted(changed))}); a new run "
                            "replaces the folder whole and would lose them: move them, or choose "
                            "another --output")


def _fresh_dir(final_dir):
    """A new empty staging folder beside final_dir, after removing killed runs' leftovers."""
    final_dir = Path(final_dir)
    remove_leftovers(final_dir.parent)
    try:
        return Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=_temp_prefix(final_dir.name)))
    except OSError as err:
        raise PipelineError(f"cannot write {final_dir}: {err.strerror}") from None


def _publish_dir(staging, final_dir):
    """Replace final_dir with the finished staging folder in two renames."""
    final_dir = Path(final_dir)
    os.chmod(staging, 0o777 & ~UMASK)      # mkdtemp made it private to its owner
    if final_dir.exists():
        old = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=_temp_prefix(final_dir.name)))
        os.replace(final_dir, old / final_dir.name)
        os.replace(staging, final_dir)
        shutil.rmtree(old)
    else:
        os.replace(staging, final_dir)


def _missing_ancestors(path):
    """The folders above path that do not exist yet, nearest first."""
    missing = []
    for parent in Path(path).absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


@contextmanager
def staged_output(final_dir, marker=None, merge=False):
    """Yield an empty staging folder; on any error or interruption it is removed, with any
    parent folder made for it, and final_dir stays as it was. On success it replaces
    final_dir whole or, with merge, its files are moved into final_dir (same relative paths),
    leaving final_dir's other files alone. With `marker`, an existing final_dir must be one
    this script wrote (check_replaceable)."""
    # Through a link to the folder: the link stays and its target is what gets replaced.
    final_dir = Path(os.path.realpath(final_dir)) if os.path.islink(final_dir) else Path(final_dir)
    if marker:
        check_replaceable(final_dir, marker)
    made = _missing_ancestors(final_dir)
    ensure_folder(Path(final_dir).parent)
    staging = _fresh_dir(final_dir)
    try:
        yield staging
        if marker and not merge:
            # Again: a correction saved in the old folder while this run worked is kept too.
            check_unchanged_since(final_dir, marker)
            _write_manifest(staging, marker)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in made:
            try:
                folder.rmdir()
            except OSError:         # no longer empty: something else writes there too
                break
        raise
    if merge:
        _merge_into(staging, Path(final_dir))
    else:
        _publish_dir(staging, final_dir)


def _merge_into(staging, final_dir):
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = final_dir / path.relative_to(staging)
        ensure_folder(target.parent)
        os.chmod(path, 0o666 & ~UMASK)
        shutil.move(path, target)     # a rename: the file appears whole
    shutil.rmtree(staging)


def ensure_folder(path, what="folder"):
    """Create a folder the pipeline writes into, or say in one line why it cannot be."""
    path = refuse_file(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PipelineError(f"cannot create {what} {path}: {err.strerror}") from None
    return path


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(sources):
    """{frame: sha256_of its image file} for frames given as a path or a stack's plane (its
    file's `path`, read once for all its planes)."""
    by_file, digests = {}, {}
    for name, source in sources.items():
        path = getattr(source, "path", source)
        if path not in by_file:
            by_file[path] = sha256_of(path)
        digests[name] = by_file[path]
    return digests


# What prediction writes beside each mask <name>.<png|tif>: a colour view and, with
# --save-probs, a probability map per class. get_contour.py and the benches read them back.
COLOR_SUFFIX, PROB_INFIX = "_color", "_prob_"


def color_file(name):
    return f"{name}{COLOR_SUFFIX}.png"


def prob_file(name, cls):
    return f"{name}{PROB_INFIX}{cls}.png"


def contour_file(name):
    """get_contour.py's picture of frame `name`: the longest name a frame gets, which
    prediction checks too, so that a name too long is refused before the frames are predicted."""
    return f"{name}_contour.png"


LOCK_NAME = ".work.lock"


def work_lock(folder, script):
    """Hold the work folder for one script run: a second gen_img_aug.py or pre_processing.py
    on the same folder, or one while a training reads its patches (work_read_lock), is
    refused instead of changing the files under the other."""
    return exclusive_lock(Path(folder) / LOCK_NAME, script,
                          lambda holder: f"{folder} is in use by {holder}; wait for it to "
                                         "finish, or use another --work-dir",
                          unnamed="a training that reads its patches")


@contextmanager
def work_read_lock(folder):
    """Held while training reads the work folder's patches, with any other training: a
    gen_img_aug.py or pre_processing.py cutting them again meanwhile made the training stop
    with TensorFlow's traceback on a patch gone."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():      # gen_img_aug.py leaves one: a folder it never wrote has none
        yield
        return
    handle = open(path)
    try:
        if _try_lock(handle, path, shared=True) is False:
            raise PipelineError(f"{folder} is being written by {_holder(handle)}; wait for it "
                                "to finish, or use another --work-dir")
        yield
    finally:
        handle.close()


def lock_beside(folder):
    """The lock file of a folder a script writes: hidden, beside it (inside, it would be part
    of what the folder holds)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder.with_name(f".{folder.name.lstrip('.')}.lock")


@contextmanager
def output_lock(folder, script):
    """Held while a script writes an output folder: a second run into it is refused, where
    both used to publish and the first one's result vanished. A lock file this run made is
    removed again while still held (a run that opens it later finds no such file and makes
    its own), so that a run leaves beside the folder only what it publishes."""
    path = lock_beside(folder)
    made = not path.exists()
    with exclusive_lock(path, script,
                        lambda holder: f"{folder} is being written by {holder}; wait for it "
                                       "to finish, or use another --output"):
        try:
            yield
        finally:
            if made:
                path.unlink(missing_ok=True)


@contextmanager
def exclusive_lock(path, script, refusal, unnamed="another run"):
    """Hold the lock file at path for one script run; another run that asks for it is
    refused with refusal(holder). The operating system drops the lock when the process
    ends, killed or not; the file, emptied on release, names the holder while it runs
    (unnamed: who holds it where the file names none, shared holders)."""
    handle = open(path, "a+")
    try:
        held = _try_lock(handle, path)
        if held is False:
            raise PipelineError(refusal(_holder(handle, unnamed)))
        handle.seek(0)
        handle.truncate()
        handle.write(f"{script} (process {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
    finally:
        handle.close()


def _holder(handle, unnamed="another run"):
    try:    # Windows keeps a locked byte from other processes' reads
        handle.seek(0)
        return handle.read().strip() or unnamed
    except OSError:
        return "another run"


def _try_lock(handle, path, shared=False):
    """Take an exclusive (or shared) lock on the open file without waiting: True, False where
    another holds it, None (with a note) where the file system offers no locks (NFS without
    lockd); Windows has no shared locks, so readers go unguarded there (None)."""
    import errno
    try:
        import fcntl
    except ImportError:     # Windows
        if shared:
            return None
        import msvcrt
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError as err:
            if err.errno in (errno.EACCES, errno.EDEADLK):
                return False
            raise
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        print(f"note: {path} cannot be locked here ({err.strerror}); two runs on this folder "
              "at once would not be stopped")
        return None
