"""What C libraries print straight to the process's stderr (file descriptor 2), caught.

libpng and libjpeg, inside OpenCV, report a damaged file by printing a bare line such as
"libpng error: IDAT: incorrect data check" or "Corrupt JPEG data: premature end of data
segment", which names no file; a JPEG decoded despite such a line has made-up pixels. Caught
here, the caller can fold the line into its own error naming the file."""
import os
import sys
import tempfile
from contextlib import contextmanager


_sink = None     # one temporary file per process, emptied for each use: made anew, it cost
                # a third of a small patch's decoding


def _empty_sink():
    global _sink
    if _sink is None:
        _sink = tempfile.TemporaryFile()
    _sink.seek(0)
    _sink.truncate()
    return _sink


@contextmanager
def caught_native_stderr(kept):
    """Within the block, lines written to file descriptor 2 are collected; on leaving it,
    those for which kept(line) is true are returned in the list this yields, the others are
    written to stderr as they came. Where stderr cannot be taken over (closed, no temporary
    file), nothing is caught."""
    lines = []
    try:
        sink = _empty_sink()
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield lines
        return
    try:
        os.dup2(sink.fileno(), 2)
        yield lines
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        text = sink.read().decode(errors="replace")
    passed = []
    for line in text.splitlines(keepends=True):
        if kept(line):
            lines.append(line.strip())
        else:
            passed.append(line)
    if passed:
        sys.stderr.write("".join(passed))
        sys.stderr.flush()
