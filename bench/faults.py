"""Recovery after kill -9: every pipeline script killed at random moments, then run again.

What it measures: whether rerunning the same command after a hard kill (SIGKILL to the
script's whole process group, workers included) always gives what an uninterrupted run gives.
It runs the six scripts on tiny synthetic data in a temporary folder:

1. one uninterrupted reference run of each stage, timed, keeping a copy of the folders
   before each stage (and, for the deterministic stages, a control run that must reproduce
   the reference byte for byte, or the comparison below would mean nothing);
2. for each fault: restore the stage's inputs from the reference, start the stage in its
   own process group, sleep a seeded random time drawn from the reference run's timeline,
   kill the group with SIGKILL, note what the killed run left, run the same command again to
   completion, and judge:

   * labelme_to_label, gen_img_aug, pre_processing, predict (--save-probs), get_contour:
     the whole data and work tree is byte-identical to the reference run's (masks, IoU
     tables, predict.json, patches.csv, figures, everything, and nothing more);
   * training (not bitwise reproducible after a resume): the rerun resumes (prints
     "(resuming)" or finishes the model) whenever the killed run had left a resume point
     (backup/); without one a fresh start is allowed; no rerun repeats more than one epoch
     the killed run had logged; log.csv's epoch column is 0..N-1, each once; the best and
     SWA models load with keras.saving.load_model(compile=False); config.json has `result`
     and its sha256 entries match the model files, one entry for each; backup/ is gone; every
     other file equals the reference. One training fault in six (at least one) is a double
     fault: the rerun is killed too, then run again to completion;
   * always: the rerun exits 0 and no `.tmp-` entry is left anywhere in the folders.

Kill times are seeded draws from the reference run's timeline, counted from an event of the
killed run itself so they land where meant on a busy machine: for training, start-up (from
the start), inside an epoch (from Keras's "Epoch k/N" line), the end of an epoch (from the
moment its snapshot file appears: snapshot, best model, state, log row, curves, backup),
each epoch in turn, and the final phase (from the last epoch's backup: its first 2 seconds,
where fit ends, or anywhere up to the exit: SWA, config.json); for the other stages mostly after
the script's first write (its start is imports), one per stage from anywhere. Faults go to
stages roughly by their reference durations, at least 3 per stage. A killed run that ends
before its kill (faster than the reference) is tried again from the same inputs with half the
delay, up to 4 times; the table says which try was killed.

    .venv/bin/python bench/faults.py [--faults 28] [--seed 0] [--out DIR] [--keep]
                                     [--stages STAGE ...]

It prints the date and the CPU, the reference timeline, one row per fault (stage, fault
number, seconds from the run's start to its kill: both kills for a double fault, '-' for a run
that ended before its kill; the targeted phase; what the killed run left: temporary entries,
for training the backup's epoch, log rows, state, snapshots and models; the rerun's exit
status; the verdict with its reason and, for training, how each rerun went on), and last
`N faults, R recovered, M lost`; exit status 0 only when nothing was lost. It takes about
25 minutes on 2 CPU cores (training is most of it) and needs about 2 GB of disk. Logs of
every run go to <out>/logs, kept when a fault was lost or with --keep. For development,
`--stages train` (say) faults only the named stages (the reference still runs all six).
"""
import argparse
import csv
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import hardware  # noqa: E402
from outputs import sha256_of

VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(VENV_PY) if VENV_PY.is_file() else sys.executable

STAGES = ("labelme_to_label", "gen_img_aug", "pre_processing", "train", "predict", "get_contour")
SCRIPTS = {"labelme_to_label": "labelme_to_label.py", "gen_img_aug": "gen_img_aug.py",
           "pre_processing": "pre_processing.py", "train": "train_unet_xception_resnetblock.py",
           "predict": "predict_lovasz_loss.py", "get_contour": "get_contour.py"}
EPOCHS = 3
TEST_NAMES = ("sample_02", "sample_05")
WEIGHTS_STEM = "unet_xception_resnet_nsgd32_lovaszsoftmax"
# Files training writes whose bytes legitimately differ from the reference run's.
TRAIN_OUTPUTS = ("work/weights", "work/figures/training_curves.png")
TEMP_MARK = ".tmp-"
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+)\s*$")


# ---------------------------------------------------------------- machine

def machine_lines():
    return [f"date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"cpu: {hardware.cpu_line(hardware.cpu_summary())}"]


# ---------------------------------------------------------------- folders

def commands(run):
    data, work = run / "data", run / "work"
    script = {s: [PY, str(ROOT / f)] for s, f in SCRIPTS.items()}
    return {
        "labelme_to_label": script["labelme_to_label"] + [
            "--input", str(data / "labelme"), "--data-dir", str(data)],
        "gen_img_aug": script["gen_img_aug"] + [
            "--data-dir", str(data), "--work-dir", str(work), "--num-patches", "400",
            "--patch-size", "64", "--workers", "2"],
        "pre_processing": script["pre_processing"] + ["--work-dir", str(work), "--workers", "2"],
        "train": script["train"] + [
            "--data-dir", str(data), "--work-dir", str(work), "--weights", "none",
            "--epochs", str(EPOCHS), "--steps-per-epoch", "4", "--val-steps", "1",
            "--bn-batches", "2", "--swa-epochs", "2", "--verbose", "2"],
        "predict": script["predict"] + [
            "--data-dir", str(data), "--work-dir", str(work), "--save-probs"],
        "get_contour": script["get_contour"] + ["--data-dir", str(data), "--work-dir", str(work)],
    }


def entries(root):
    """Relative path -> 'd' (folder), 'l' (link) or 'f' (file) for everything under root."""
    out = {}
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in dirs + files:
            path = Path(folder) / name
            rel = (base / name).as_posix()
            out[rel] = "l" if path.is_symlink() else "d" if name in dirs else "f"
    return out


def manifest(root):
    """Relative path -> 'dir', 'link:<target>' or the file's sha256, for the whole tree."""
    out = {}
    for rel, kind in entries(root).items():
        path = root / rel
        if kind == "d":
            out[rel] = "dir"
        elif kind == "l":
            out[rel] = "link:" + os.readlink(path)
        else:
            out[rel] = sha256_of(path)
    return out


def temp_entries(root):
    """Top-most entries under root whose names carry the pipeline's temporary tag."""
    found = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder).relative_to(root)
        for name in list(dirs):
            if TEMP_MARK in name:
                found.append((base / name).as_posix() + "/")
                dirs.remove(name)
        found += [(base / n).as_posix() for n in files if TEMP_MARK in n]
    return sorted(found)


def without(man, prefixes):
    return {k: v for k, v in man.items()
            if not any(k == p or k.startswith(p + "/") for p in prefixes)}


def diff(got, want):
    """Short description of how manifest `got` differs from `want` ('' when equal)."""
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    changed = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    parts = []
    for what, names in (("missing", missing), ("extra", extra), ("differ", changed)):
        if names:
            parts.append(f"{len(names)} {what} (e.g. {names[0]})")
    return "; ".join(parts)


def restore(snapshot, run):
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(snapshot, run, symlinks=True)


# ---------------------------------------------------------------- running a stage

class Run:
    """One start of a script in its own process group. With kill=(anchor, offset) its group
    gets SIGKILL `offset` seconds after anchor(self) first returns true (anchor None: after
    the start); with timeout it is killed when it runs longer (a hung run)."""

    def __init__(self, argv, cwd, log_path, kill=None, timeout=None, monitor=None):
        self.argv, self.cwd, self.log_path = argv, cwd, log_path
        self.kill, self.timeout, self.monitor = kill, timeout, monitor
        self.lines, self.killed, self.timed_out, self.rc, self.seconds = [], False, False, None, 0.0

    def go(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3",
                   PYTHONDONTWRITEBYTECODE="1")
        self.start = time.monotonic()
        proc = subprocess.Popen(self.argv, cwd=self.cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)
        reader = threading.Thread(target=self._read, args=(proc,), daemon=True)
        reader.start()
        stop = threading.Event()
        watcher = None
        if self.monitor:
            watcher = threading.Thread(target=self._watch, args=(stop,), daemon=True)
            watcher.start()
        anchor, offset = self.kill if self.kill else (None, None)
        deadline = None if self.kill else (self.start + self.timeout if self.timeout else None)
        if self.kill and anchor is None:
            deadline = self.start + offset
        while proc.poll() is None:
            now = time.monotonic()
            if deadline is None and anchor is not None and anchor(self):
                deadline = now + offset
            if deadline is not None and now >= deadline:
                kill_group(proc.pid)
                self.killed, self.timed_out = bool(self.kill), not self.kill
                self.seconds = now - self.start
                break
            time.sleep(0.01 if self.kill else 0.05)
        proc.wait()
        if not (self.killed or self.timed_out):
            self.seconds = time.monotonic() - self.start
        wait_group_gone(proc.pid)
        reader.join(timeout=10)
        stop.set()
        if watcher:
            watcher.join()
        self.rc = proc.returncode
        with open(self.log_path, "w") as f:
            f.write(" ".join(self.argv) + "\n")
            f.writelines(f"[{t:8.2f}] {line}\n" for t, line in self.lines)
            f.write(f"exit status {self.rc}" + (f", killed after {self.seconds:.2f} s"
                                                 if self.killed else "") + "\n")
        return self

    def _read(self, proc):
        for raw in proc.stdout:
            self.lines.append((time.monotonic() - self.start,
                               raw.decode("utf-8", "replace").rstrip("\n")))

    def _watch(self, stop):
        while not stop.is_set():
            self.monitor(time.monotonic() - self.start, self)
            stop.wait(0.05)

    @property
    def text(self):
        return "\n".join(line for _, line in self.lines)


def kill_group(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_members(pgid):
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid, seconds=20):
    deadline = time.monotonic() + seconds
    while group_members(pgid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of group {pgid} survive SIGKILL: {group_members(pgid)}")
        kill_group(pgid)
        time.sleep(0.05)


# ---------------------------------------------------------------- reference run

# Folders whose listings show a script's first write: staging folders and temporary files
# appear beside their final names there, and the scripts delete their completion markers there.
WATCHED = ("", "data", "work", "work/train", "work/test", "work/weights",
           "work/weights/snapshots")


def listing(run):
    names = set()
    for folder in WATCHED:
        try:
            names.update(f"{folder}/{n}" for n in os.listdir(run / folder))
        except OSError:
            pass
    return frozenset(names)


def backup_epoch(run):
    meta = read_json_quiet(run / "work" / "weights" / "backup" / "training_metadata.json")
    return meta.get("epoch") if isinstance(meta, dict) else None


def has_snapshot(run, k):
    try:
        return any(f"epoch_{k:03d}." in n for n in os.listdir(run / "work/weights/snapshots"))
    except OSError:
        return False


def epoch_begun(r, k=None):
    """Whether run r printed Keras's 'Epoch k/N' line (any epoch when k is None)."""
    for _, line in r.lines:
        m = EPOCH_LINE.match(line.strip())
        if m and (k is None or int(m[1]) == k):
            return True
    return False


# Anchors: conditions on a running script that a kill time counts from.
def first_write(run):
    initial = listing(run)
    return lambda r: listing(run) != initial


def anchor_epoch_begin(k):
    return lambda r: epoch_begun(r, k)


def anchor_snapshot(run, k):
    return lambda r: has_snapshot(run, k)


def anchor_backup(run, k):
    return lambda r: backup_epoch(run) == k


class Timeline:
    """When a reference run first wrote, began each epoch, started each epoch's snapshot and
    finished each epoch's backup (seconds from its start)."""

    def __init__(self, run, stage):
        self.run, self.stage = run, stage
        self.initial = listing(run)
        self.active = None
        self.begin, self.snap, self.backup = {}, {}, {}

    def __call__(self, t, r):
        if self.active is None and listing(self.run) != self.initial:
            self.active = t
        if self.stage != "train":
            return
        for k in range(1, EPOCHS + 1):
            if k not in self.begin and epoch_begun(r, k):
                self.begin[k] = t
            if k not in self.snap and has_snapshot(self.run, k):
                self.snap[k] = t
        epoch = backup_epoch(self.run)
        if isinstance(epoch, int):
            self.backup.setdefault(epoch, t)

    def describe(self, seconds):
        if self.stage != "train":
            return (f"first write at {self.active:.1f} s" if self.active is not None
                    else "no write seen before the end")
        return "; ".join(f"epoch {k}: begins {self.begin.get(k, float('nan')):.1f}, snapshot "
                         f"{self.snap.get(k, float('nan')):.1f}, backup "
                         f"{self.backup.get(k, float('nan')):.1f}"
                         for k in range(1, EPOCHS + 1)) + f"; ends {seconds:.1f} s"


def reference(out, run, states, logs):
    """Run each stage once uninterrupted; keep a copy before each, manifests after each."""
    cmds = commands(run)
    refs = {}
    for i, stage in enumerate(STAGES):
        snapshot = states / f"{i}-{stage}"
        shutil.copytree(run, snapshot, symlinks=True)
        before = manifest(run)
        timeline = Timeline(run, stage)
        r = Run(cmds[stage], out, logs / f"ref-{stage}.log", monitor=timeline).go()
        if r.rc != 0:
            sys.exit(f"reference run of {stage} failed (exit {r.rc}); see {r.log_path}:\n"
                     + "\n".join(line for _, line in r.lines[-20:]))
        refs[stage] = {"before": snapshot, "before_man": before, "after": manifest(run),
                       "seconds": r.seconds, "timeline": timeline}
        print(f"  reference {stage:<16} {r.seconds:6.1f} s  ({timeline.describe(r.seconds)})",
              flush=True)
    return refs


def control(out, run, refs, logs):
    """Run every deterministic stage once more from the same inputs: it must reproduce the
    reference, or a byte comparison could not judge recovery."""
    cmds = commands(run)
    for stage in STAGES:
        if stage == "train":
            continue
        restore(refs[stage]["before"], run)
        r = Run(cmds[stage], out, logs / f"control-{stage}.log").go()
        problem = (f"exit {r.rc}" if r.rc else diff(manifest(run), refs[stage]["after"]))
        if problem:
            sys.exit(f"a second uninterrupted run of {stage} differs from the first ({problem}); "
                     "this bench cannot judge its recovery by bytes")
    print("  control: a second uninterrupted run of each deterministic stage reproduces the "
          "reference byte for byte", flush=True)


# ---------------------------------------------------------------- planning the faults

def allocate(total, seconds, stages):
    """Faults per stage: 3 each (fewer only when --faults is too small for that), the rest
    in proportion to the reference durations."""
    base = min(3, total // len(stages))
    counts = {s: base for s in stages}
    extra = total - base * len(stages)
    whole = sum(seconds[s] for s in stages)
    shares = {s: extra * seconds[s] / whole for s in stages}
    for s in stages:
        counts[s] += int(shares[s])
    left = extra - sum(int(v) for v in shares.values())
    for s in sorted(stages, key=lambda s: shares[s] - int(shares[s]), reverse=True)[:left]:
        counts[s] += 1
    return counts


def train_windows(ref):
    """Kill windows of training from the reference timeline, each (label, anchor maker,
    longest offset): anchor_maker(run) gives the condition the offset counts from."""
    T, tl = ref["seconds"], ref["timeline"]
    for k in range(1, EPOCHS + 1):
        if k not in tl.begin or k not in tl.snap or k not in tl.backup:
            raise SystemExit(f"the reference training run's timeline lacks epoch {k}: "
                             f"{tl.describe(T)}")
    windows = {"startup": [("start-up", None, tl.begin[1])], "run": [], "end": [], "final": []}
    for k in range(1, EPOCHS + 1):
        windows["run"].append((f"in epoch {k}", lambda run, k=k: anchor_epoch_begin(k),
                               max(0.1, tl.snap[k] - tl.begin[k])))
        windows["end"].append((f"epoch {k} end", lambda run, k=k: anchor_snapshot(run, k),
                               tl.backup[k] - tl.snap[k] + 0.3))
    # The end of fit (backup removed, training marked finished) gets kills of its own: its
    # first seconds, beside the whole final phase (SWA, config.json, exit).
    windows["final"] += [("end of fit", lambda run: anchor_backup(run, EPOCHS),
                          min(2.0, T - tl.backup[EPOCHS])),
                         ("final SWA/config", lambda run: anchor_backup(run, EPOCHS),
                          T - tl.backup[EPOCHS])]
    return windows


TRAIN_KINDS = ("end", "run", "final", "end", "startup", "run", "end", "final", "end", "run")


def plan_faults(counts, refs, rng):
    """A list of fault dicts: stage, number, phase label, anchor maker and offset, and for a
    double fault the second kill's offset after the rerun's first epoch begins."""
    faults = []
    for stage in counts:
        ref, n = refs[stage], counts[stage]
        if stage == "train":
            windows = train_windows(ref)
            tl = ref["timeline"]
            epoch_seconds = tl.begin[2] - tl.begin[1]
            doubles = set(range(3, n, 6)) or {n - 1}
            seen = {}
            for j in range(n):
                kind = TRAIN_KINDS[j % len(TRAIN_KINDS)]
                choices = windows[kind]
                if j in doubles:
                    # Not in the last epoch: the rerun must have an epoch left to be killed in.
                    kind = "end" if j % 2 else "run"
                    choices = windows[kind][:-1]
                # Each kind's windows in turn (epoch 1, 2, 3, 1, ...), so all are covered.
                label, anchor, longest = choices[seen.get(kind, 0) % len(choices)]
                seen[kind] = seen.get(kind, 0) + 1
                low = 0.03 * ref["seconds"] if anchor is None else 0.0
                faults.append({"stage": stage, "n": j + 1, "phase": label, "anchor": anchor,
                               "offset": rng.uniform(low, longest), "double": j in doubles,
                               "second": rng.uniform(0.2, 1.2) * epoch_seconds})
            continue
        T, active = ref["seconds"], ref["timeline"].active
        for j in range(n):
            if j == 1 or active is None:
                faults.append({"stage": stage, "n": j + 1, "phase": "anywhere", "anchor": None,
                               "offset": rng.uniform(0.03 * T, 0.97 * T), "double": False})
            else:
                faults.append({"stage": stage, "n": j + 1, "phase": "after 1st write",
                               "anchor": first_write, "offset": rng.uniform(0, 0.98 * T - active),
                               "double": False})
    return faults


# ---------------------------------------------------------------- judging

def read_json_quiet(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def log_epochs(model_dir):
    try:
        with open(model_dir / "log.csv", newline="") as f:
            return [int(float(r["epoch"])) for r in csv.DictReader(f) if r.get("epoch") not in
                    (None, "")]
    except (OSError, ValueError, KeyError):
        return None


def describe_left(stage, run, before, after):
    """What a killed run left in the folders, in a few words."""
    temps = temp_entries(run)
    parts = []
    if temps:
        shown = []
        for t in temps[:2]:
            name = t.rstrip("/")
            short = re.sub(r"\.tmp-[0-9a-f]{8}-\d+-\w*", ".tmp…", name)
            short = short.replace(WEIGHTS_STEM, "…")
            path = run / name
            if path.is_dir():
                count = sum(1 for p in path.rglob("*") if p.is_file())
                short += f"/ ({count} files)"
            shown.append(short.removeprefix("work/").removeprefix("data/"))
        parts.append("tmp " + ", ".join(shown) + (f" +{len(temps) - 2}" if len(temps) > 2 else ""))
    if stage == "train":
        parts.insert(0, describe_model_dir(run / "work" / "weights"))
        return "; ".join(p for p in parts if p)
    now = manifest(run)
    clean = {k: v for k, v in now.items() if TEMP_MARK not in k}
    if clean == after:
        parts.insert(0, "complete outputs")
    else:
        changed = diff(clean, before)
        if changed:
            n = sum(int(x.split()[0]) for x in changed.split("; "))
            parts.insert(0, f"{n} paths changed")
    return "; ".join(parts) or "nothing"


def describe_model_dir(model_dir):
    if not model_dir.is_dir():
        return "no model folder"
    bits = []
    backup = model_dir / "backup"
    if backup.is_dir():
        meta = read_json_quiet(backup / "training_metadata.json")
        files = sorted(re.sub(r"\.tmp-[0-9a-f]{8}-\d+-\w*", ".tmp…", p.name)
                       for p in backup.iterdir())
        if isinstance(meta, dict) and "epoch" in meta:
            bits.append(f"backup e{meta['epoch']}")
        else:
            bits.append("backup " + ("(" + ",".join(files) + ")" if files else "(empty)"))
    epochs = log_epochs(model_dir)
    if epochs:
        bits.append(f"log {len(epochs)} rows")
    state = read_json_quiet(model_dir / "state.json")
    if isinstance(state, dict):
        bits.append(f"state e{state.get('epochs_done')}" + (" fin" if state.get("finished") else ""))
    snaps = sorted(int(m[1]) for p in (model_dir / "snapshots").glob("epoch_*.*")
                   if (m := re.match(r"epoch_(\d+)\.", p.name)))
    if snaps:
        bits.append("snap " + ",".join(map(str, snaps)))
    for kind in ("best", "swa"):
        if any(model_dir.glob(f"{WEIGHTS_STEM}_{kind}.*")):
            bits.append(kind)
    config = read_json_quiet(model_dir / "config.json")
    if isinstance(config, dict) and "result" in config:
        bits.append("result")
    return " ".join(bits) or "empty model folder"


def judge_deterministic(stage, run, ref, rerun):
    if rerun.timed_out:
        return "rerun hung (killed after its time limit)"
    if rerun.rc != 0:
        return f"rerun exit {rerun.rc}: {last_error(rerun)}"
    temps = temp_entries(run)
    if temps:
        return f"{len(temps)} .tmp- left, e.g. {temps[0]}"
    problem = diff(manifest(run), ref["after"])
    return f"output differs from the reference: {problem}" if problem else ""


def last_error(r):
    lines = [line for _, line in r.lines if line.strip()]
    for line in reversed(lines):
        if line.startswith("error:") or re.match(r"^\w+(\.\w+)*(Error|Exception)\b", line):
            return line.strip()[:160]
    return (lines[-1].strip()[:160] if lines else "no output")


def rerun_behaviour(r, left_state):
    """('' or problem, note) about one training rerun started on left_state."""
    text = r.text
    started = [int(m[1]) - 1 for _, line in r.lines if (m := EPOCH_LINE.match(line.strip()))]
    logged = set(left_state["log"] or [])
    repeated = sorted(set(started) & logged)
    resumed = "(resuming)" in text
    finished = "training had finished" in text or "nothing to do" in text
    fresh = "training on " in text and not resumed
    note = ("resumed" if resumed else "finished" if finished else "fresh" if fresh
            else "no start line")
    # Epochs as Keras numbers them (log.csv's epoch column + 1).
    shown = ",".join(str(e + 1) for e in repeated)
    if repeated:
        note += f", repeated epoch {shown}"
    if len(repeated) > 1:
        return f"repeated epochs {shown}, all logged by the killed run", note
    if fresh and left_state["backup"]:
        return "started over although the killed run left a resume point (backup/)", note
    if fresh and left_state["finished"]:
        return "started over although the killed run had finished training", note
    return "", note


def model_state(run):
    model_dir = run / "work" / "weights"
    state = read_json_quiet(model_dir / "state.json")
    return {"log": log_epochs(model_dir) if model_dir.is_dir() else [],
            "backup": (model_dir / "backup").is_dir(),
            "finished": isinstance(state, dict) and bool(state.get("finished"))}


def judge_train(run, ref, reruns, logs, tag):
    """'' when training recovered, else why not; plus a note on how it resumed."""
    final = reruns[-1][0]
    notes, problems = [], []
    for r, left in reruns:
        if r is final or r.text:
            problem, note = rerun_behaviour(r, left)
            notes.append(note)
            if problem:
                problems.append(problem)
    note = "; ".join(notes)
    if final.timed_out:
        return "rerun hung (killed after its time limit)", note
    if final.rc != 0:
        return f"rerun exit {final.rc}: {last_error(final)}", note
    if problems:
        return problems[0], note
    temps = temp_entries(run)
    if temps:
        return f"{len(temps)} .tmp- left, e.g. {temps[0]}", note
    model_dir = run / "work" / "weights"
    epochs = log_epochs(model_dir)
    if epochs != list(range(EPOCHS)):
        return f"log.csv epochs {epochs}, want {list(range(EPOCHS))}", note
    if (model_dir / "backup").exists():
        return "backup/ left after training finished", note
    config = read_json_quiet(model_dir / "config.json")
    if not isinstance(config, dict) or "result" not in config:
        return "config.json missing, unreadable or without result", note
    hashes = config.get("sha256", {})
    files = {p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")
             if p.is_file() and p.suffix in (".h5", ".keras") and "backup" not in p.parts}
    if set(hashes) != files:
        return (f"config.json sha256 lists {sorted(hashes)} but the folder holds "
                f"{sorted(files)}"), note
    bad = [k for k, v in hashes.items() if sha256_of(model_dir / k) != v]
    if bad:
        return f"sha256 in config.json does not match {bad[0]}", note
    paths = [model_dir / config["weights_files"][k] for k in ("best", "swa")]
    loader = Run([PY, "-c", LOAD_CHECK, *map(str, paths)], run.parent, logs / f"{tag}-load.log",
                 timeout=600).go()
    if loader.rc != 0 or "models load" not in loader.text:
        return f"a model does not load with keras: {last_error(loader)}", note
    rest = diff(without(manifest(run), TRAIN_OUTPUTS), without(ref["after"], TRAIN_OUTPUTS))
    if rest:
        return f"files beside the model differ from the reference: {rest}", note
    return "", note


LOAD_CHECK = """
import sys, keras
for path in sys.argv[1:]:
    keras.saving.load_model(path, compile=False)
print("models load")
"""


# ---------------------------------------------------------------- one fault

ATTEMPTS = 4


def run_fault(fault, refs, out, run, logs):
    stage, ref = fault["stage"], refs[fault["stage"]]
    cmd = commands(run)[stage]
    tag = f"{stage}-{fault['n']}"
    limit = 10 * ref["seconds"] + 300
    # A run faster than the reference may end before its kill: then the same fault again,
    # with half the delay (a few times at most), so short stages get killed too.
    offset = fault["offset"]
    for attempt in range(1, ATTEMPTS + 1):
        restore(ref["before"], run)
        anchor = fault["anchor"](run) if fault["anchor"] else None
        killed = Run(cmd, out, logs / f"{tag}-killed.log", kill=(anchor, offset)).go()
        if killed.killed:
            break
        offset /= 2
    kills, lefts, reruns = [killed], [left_by(stage, run, ref, killed)], []
    if attempt > 1:
        lefts[0] = f"(try {attempt}) " + lefts[0]
    if fault.get("double"):
        left = model_state(run)
        second = Run(cmd, out, logs / f"{tag}-killed2.log",
                     kill=(anchor_epoch_begin(None), fault["second"])).go()
        reruns.append((second, left))
        kills.append(second)
        lefts.append(left_by(stage, run, ref, second))
    left_state = model_state(run) if stage == "train" else None
    rerun = Run(cmd, out, logs / f"{tag}-rerun.log", timeout=limit).go()
    reruns.append((rerun, left_state))
    if stage == "train":
        reason, note = judge_train(run, ref, reruns, logs, tag)
    else:
        reason, note = judge_deterministic(stage, run, ref, rerun), ""
    return {"kills": kills, "left": " | ".join(lefts), "rc": rerun.rc, "reason": reason,
            "note": note}


def left_by(stage, run, ref, killed):
    left = describe_left(stage, run, ref["before_man"], ref["after"])
    return left if killed.killed else f"not killed: exit {killed.rc}; {left}"


# ---------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--faults", type=int, default=28,
                   help="number of faults in all, at least 3 per stage (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    p.add_argument("--out", help="folder to work in (default: a new one under the system's "
                                 "temporary folder); it must be empty or absent")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                   help="fault only these stages (default: all; the reference runs all)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work folder (otherwise only the logs stay, and only when a "
                        "fault was lost)")
    args = p.parse_args(argv)
    args.stages = [s for s in STAGES if s in args.stages]
    if args.faults < len(args.stages):
        p.error("--faults must be at least one per stage")
    return args


def main(argv=None):
    args = parse_args(argv)
    wall = time.monotonic()
    if args.out:
        out = Path(args.out).resolve()
        if out.exists() and any(out.iterdir()):
            sys.exit(f"--out {out} is not empty")
        out.mkdir(parents=True, exist_ok=True)
    else:
        out = Path(tempfile.mkdtemp(prefix="faults-"))
    run, states, logs = out / "run", out / "states", out / "logs"
    for folder in (states, logs):
        folder.mkdir()
    for line in machine_lines():
        print(line)
    print(f"python: {PY}; seed {args.seed}; {args.faults} faults; folder {out}")
    print("data: 5 synthetic 200x160 frames, test images " + ", ".join(TEST_NAMES)
          + f"; 400 patches of 64 px; training {EPOCHS} epochs x 4 steps, --weights none",
          flush=True)

    made = Run([PY, str(ROOT / "data" / "make_sample_data.py"), "--out-dir", str(run / "data"),
                "--count", "5", "--width", "200", "--height", "160"], out,
               logs / "make_sample_data.log").go()
    if made.rc != 0:
        sys.exit(f"make_sample_data.py failed; see {made.log_path}")
    (run / "data" / "test.txt").write_text("".join(f"{n}\n" for n in TEST_NAMES))

    refs = reference(out, run, states, logs)
    control(out, run, refs, logs)
    counts = allocate(args.faults, {s: refs[s]["seconds"] for s in STAGES}, args.stages)
    faults = plan_faults(counts, refs, random.Random(args.seed))
    print("  faults per stage: " + ", ".join(f"{s} {counts[s]}" for s in counts))
    print()
    header = (f"{'stage':<16} {'#':>2} {'kill s':>11} {'phase':<16} {'killed run left':<46} "
              f"{'rerun':>5}  verdict")
    print(header)
    print("-" * len(header), flush=True)
    recovered = lost = not_killed = 0
    for fault in faults:
        res = run_fault(fault, refs, out, run, logs)
        kill = "+".join(f"{k.seconds:.1f}" if k.killed else "-" for k in res["kills"])
        phase = fault["phase"] + (" x2" if fault["double"] else "")
        if res["reason"]:
            lost += 1
            verdict = f"LOST: {res['reason']}"
        else:
            recovered += 1
            verdict = "recovered"
        if res["note"]:
            verdict += f" ({res['note']})"
        not_killed += not all(k.killed for k in res["kills"])
        print(f"{fault['stage']:<16} {fault['n']:>2} {kill:>11} {phase:<16} {res['left']:<46} "
              f"{res['rc']:>5}  {verdict}", flush=True)

    minutes = (time.monotonic() - wall) / 60
    print()
    if not_killed:
        print(f"{not_killed} fault(s) where a run finished before its kill time (kill s '-'); "
              "judged like the others")
    print(f"wall time {minutes:.1f} min; logs in {logs if (args.keep or lost) else '(removed)'}")
    if args.keep:
        pass
    elif lost:
        shutil.rmtree(run, ignore_errors=True)
        shutil.rmtree(states, ignore_errors=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
    print(f"{len(faults)} faults, {recovered} recovered, {lost} lost")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
