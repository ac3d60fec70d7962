"""Training under tf.distribute: two replicas (two logical CPU devices) take the step one
device takes on the same global batch."""
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from distribute import free_ports, localhost_tf_config, start_localhost_workers
from synthetic_patches import make_patch_set

keras = pytest.importorskip("keras")
import model  # noqa: E402,F401  registers the network's layers, which load_model needs

pytestmark = pytest.mark.trains

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def patch_work(tmp_path_factory):
    root = tmp_path_factory.mktemp("distribute")
    (root / "data").mkdir()
    (root / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(root / "work", 40)
    return root


def plain_arithmetic(root, name):
    """Training options for runs whose weights are compared: the model folder root/name,
    cross-entropy (a per-pixel mean, as replicas sum it), plain SGD, no dropout, a constant
    learning rate, float32, no precise BN or SWA."""
    return ["--data-dir", root / "data", "--work-dir", root / "work", "--model-dir", root / name,
            "--weights", "none", "--loss", "cross-entropy", "--optimizer", "sgd",
            "--dropout", "0", "--val-steps", "1", "--bn-batches", "0", "--swa-epochs", "0",
            "--schedule", "constant", "--precision", "fp32", "--verbose", "0"]


def train_run(root, name, *extra):
    """One step with plain_arithmetic's options; the snapshot's weights and config. SGD, not
    the default NormalizedSGD: a conv bias that feeds BatchNorm has a gradient that is zero
    but for float noise, which NormalizedSGD scales up to a step of the learning rate, so
    any change of summation order moves those biases apart
    (test_normalized_sgd_steps_on_the_summed_gradient checks that optimizer). One step: from
    a random start, float noise in the BatchNorm sums grows with every further step."""
    model_dir = root / name
    args = [*plain_arithmetic(root, name), "--epochs", "1", "--steps-per-epoch", "1", *extra]
    result = subprocess.run([sys.executable, ROOT / "train_unet_xception_resnetblock.py",
                             *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    net = keras.saving.load_model(model_dir / "snapshots" / "epoch_001.h5", compile=False)
    return ([w.numpy() for w in net.trainable_weights],
            json.loads((model_dir / "config.json").read_text()))


def largest_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def one_device(patch_work):
    """(weights after one step of a global batch of 4 on one device, config, and how far a
    batch of 2 instead moves them): what the distributed runs must reproduce."""
    one, config = train_run(patch_work, "one", "--strategy", "one", "--batch-size", "4")
    other, _ = train_run(patch_work, "small", "--strategy", "one", "--batch-size", "2")
    apart = largest_difference(one, other)
    assert apart > 1e-4
    return one, config, apart


def test_two_replicas_take_the_step_of_one_device_on_the_same_global_batch(patch_work,
                                                                          one_device):
    """BatchNorm statistics summed over the replicas, the loss scaled by the replica count
    and the gradients summed: the network's weights after a step equal one device's (each
    replica normalising with its own half batch's statistics missed by about 1e-3)."""
    one, one_config, apart = one_device
    two, two_config = train_run(patch_work, "two", "--strategy", "mirrored",
                                "--cpu-devices", "2", "--batch-size", "2")
    assert one_config["distribution"] == {"strategy": "one device", "replicas": 1,
                                          "global_batch": 4}
    assert two_config["distribution"]["replicas"] == 2
    assert two_config["distribution"]["global_batch"] == 4
    # The tolerance is a hundredth of what a different global batch changes.
    same = largest_difference(one, two)
    assert same < apart / 100, (same, apart)


def test_a_last_validation_batch_too_small_for_every_replica_still_validates(patch_work):
    """9 validation patches in global batches of 4 leave a last batch of 1, which
    tf.distribute handed to one replica alone: the other's BatchNorm failed on no patch."""
    train_run(patch_work, "uneven", "--strategy", "mirrored", "--cpu-devices", "2",
              "--batch-size", "2", "--val-split-by", "patch", "--val-split", "0.225",
              "--val-steps", "3")
    split = json.loads((patch_work / "uneven" / "split.json").read_text())
    assert len(split["val"]) == 9
    with open(patch_work / "uneven" / "log.csv") as f:
        assert np.isfinite(float(next(csv.DictReader(f))["val_loss"]))


def test_validation_patches_are_repeated_only_to_split_the_last_batch_evenly():
    from train_unet_xception_resnetblock import split_evenly
    assert split_evenly(list("abcde"), 1) == list("abcde")
    assert split_evenly(list("abcde"), 2) == list("abcdea")
    assert split_evenly(list("abcd"), 4) == list("abcd")
    assert split_evenly(["a"], 4) == ["a"] * 4


NSGD_STEPS = """
import sys
sys.path.insert(0, {root!r})
from distribute import make_strategy
mirrored = make_strategy("mirrored", 2)
import keras, numpy as np, tensorflow as tf
from model import NormalizedSGD

def trained(strategy, batch):
    keras.utils.set_random_seed(3)
    with strategy.scope():
        net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="tanh"),
                                keras.layers.Conv2D(3, 1)])
        net.compile(optimizer=NormalizedSGD(0.05, momentum=0.9),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 3, (12, 6, 6))
    net.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch), epochs=1, verbose=0)
    return net.get_weights()

def largest(a, b):
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))

one = trained(tf.distribute.get_strategy(), 4)
print(largest(one, trained(mirrored, 4)), largest(one, trained(tf.distribute.get_strategy(), 2)))
"""


def test_normalized_sgd_steps_on_the_summed_gradient():
    """Each replica's gradient normalised on its own, or the global batch's normalised
    once, give different steps; two replicas must give one device's."""
    result = subprocess.run([sys.executable, "-c", NSGD_STEPS.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    same, apart = map(float, result.stdout.split())
    assert apart > 1e-2
    assert same < 1e-5


@pytest.mark.parametrize("tf_config, said", [
    ('{"cluster": {', "TF_CONFIG is not JSON"),
    ('{"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}', '"cluster": {"worker"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}}', 'needs this process\'s "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 5}}',
     "task worker 5 is not in its cluster (worker 0..1)"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}',
     "task chief 0 is not in its cluster"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "x"}}',
     "task worker x is not in its cluster"),
])
def test_a_malformed_tf_config_is_one_line(tf_config, said, monkeypatch):
    from cli import PipelineError
    from worker_loop import check_tf_config
    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(PipelineError, match=re.escape(said)):
        check_tf_config()
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    check_tf_config()


def test_a_blank_tf_config_is_no_cluster_for_multiworker(monkeypatch):
    """`export TF_CONFIG=` or a job script's empty variable: TensorFlow's resolver parsed it
    as JSON and stopped with a traceback."""
    from cli import PipelineError
    from worker_loop import make_multiworker_strategy
    monkeypatch.setenv("TF_CONFIG", " ")
    with pytest.raises(PipelineError, match="needs the cluster in TF_CONFIG"):
        make_multiworker_strategy("tf-config", 10)


MIRRORED_UNDER_TF_CONFIG = """
import os, sys
sys.path.insert(0, {root!r})
from cli import PipelineError
from distribute import make_strategy
os.environ["TF_CONFIG"] = ""
print(make_strategy("mirrored", 2).num_replicas_in_sync)
os.environ["TF_CONFIG"] = "{{bad"
try:
    make_strategy("mirrored")
except PipelineError as err:
    print(err)
"""


def test_mirrored_takes_a_blank_tf_config_as_none_and_a_broken_one_is_one_line():
    """MirroredStrategy ignores TF_CONFIG, but parses it first: a blank or broken one (left
    in a shell from a multiworker run) stopped --strategy mirrored with a traceback."""
    result = subprocess.run([sys.executable, "-c", MIRRORED_UNDER_TF_CONFIG.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    replicas, said = result.stdout.splitlines()[-2:]
    assert replicas == "2"
    assert said.startswith("TF_CONFIG is not JSON (") and "--strategy mirrored" in said


@pytest.mark.parametrize("visible", [None, "", "-1"])
def test_slurm_nodes_without_gpus_form_a_cluster_of_every_task(visible, monkeypatch, tmp_path):
    """TensorFlow's SLURM resolver counts GPUs with nvidia-smi, which CPU nodes lack, and
    with CUDA_VISIBLE_DEVICES "" or -1 counted one GPU for two tasks (a step of zero)."""
    import tensorflow as tf
    from worker_loop import slurm_gpus
    monkeypatch.setenv("PATH", str(tmp_path))       # no nvidia-smi
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for name, value in {"PROCID": "2", "STEP_NUM_TASKS": "3", "STEP_NODELIST": "cpu[1-2]",
                        "STEP_TASKS_PER_NODE": "2,1"}.items():
        monkeypatch.setenv(f"SLURM_{name}", value)
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(**slurm_gpus())
    assert resolver.cluster_spec().as_dict() == {
        "worker": ["cpu1:8888", "cpu1:8889", "cpu2:8888"]}
    assert (resolver.task_type, resolver.task_id) == ("worker", 2)
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible


BATCH_LOSS_UNDER_REPLICAS = """
import sys
sys.path.insert(0, {root!r})
from distribute import make_strategy
mirrored = make_strategy("mirrored", 2)
import keras, numpy as np, tensorflow as tf
from lovasz_losses_tf import BceDiceLoss, LovaszHingeLoss, LovaszSoftmaxLoss

rng = np.random.default_rng(0)
x = rng.normal(size=(4, 8, 8, 1)).astype("float32")
y = rng.integers(0, 2, (4, 8, 8))
for loss in (LovaszSoftmaxLoss(), LovaszHingeLoss(), BceDiceLoss()):
    keras.utils.set_random_seed(3)
    with mirrored.scope():
        net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, padding="same")])
        net.compile(loss=loss)
    logged = net.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(4), verbose=0)
    halves = (loss(y[:2], net(x[:2])) + loss(y[2:], net(x[2:]))) / 2
    print(logged, float(halves))
"""


def test_a_loss_of_one_value_per_batch_is_each_replicas_share():
    """The Lovasz losses (and BCE-Dice) return one value for a replica's batch: two replicas
    log and step on the mean of their halves' losses, not on their sum (a Lovasz loss above
    1 was the sign)."""
    result = subprocess.run([sys.executable, "-c", BATCH_LOSS_UNDER_REPLICAS.format(
        root=str(ROOT))], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for line in result.stdout.split("\n")[-4:-1]:
        logged, halves = map(float, line.split())
        assert logged == pytest.approx(halves, rel=1e-5)


WORKER_LOOP_NAN_STEP = """
import sys
sys.path.insert(0, {root!r})
import keras, numpy as np, tensorflow as tf
from model import NormalizedSGD
from training_callbacks import DivergenceGuard
from worker_loop import WorkerLoop

strategy = tf.distribute.MultiWorkerMirroredStrategy()   # no TF_CONFIG: this one worker
keras.utils.set_random_seed(3)
with strategy.scope():
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                            keras.layers.BatchNormalization(), keras.layers.Activation("tanh"),
                            keras.layers.Conv2D(3, 1)])
    net.compile(optimizer=NormalizedSGD(0.05, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.optimizer.build(net.trainable_variables)

class NaNForwardPass(keras.callbacks.Callback):
    # The first kernel NaN during epoch 0's second step only, as one bad bf16 step.
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == (0, 1):
            self.saved = net.layers[0].kernel.numpy()
            net.layers[0].kernel.assign(np.full(self.saved.shape, np.nan, "float32"))
    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == (0, 1):
            net.layers[0].kernel.assign(self.saved)

rng = np.random.default_rng(0)
x = rng.normal(size=(12, 8, 8, 1)).astype("float32")
y = rng.integers(0, 3, (12, 6, 6))
data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
guard = DivergenceGuard()
WorkerLoop(net, strategy, 4).fit(data, 2, 3, [NaNForwardPass(), guard])
finite = all(np.isfinite(v.numpy()).all() for v in net.variables)
print(guard.skipped, guard.rollbacks, int(finite))
"""


def test_the_worker_loop_skips_a_nan_step_instead_of_rolling_back_its_epoch():
    """Under worker_loop.py (MultiWorkerMirroredStrategy), as under model.fit, a NaN loss on
    finite weights costs its step: the guard sees each step's loss, so the NaN that
    BatchNorm's statistics took from that pass does not roll the epoch back at its end."""
    result = subprocess.run([sys.executable, "-c", WORKER_LOOP_NAN_STEP.format(root=str(ROOT))],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    skipped, rollbacks, finite = map(int, result.stdout.split()[-3:])
    assert (skipped, rollbacks, finite) == (1, 0, 1), result.stdout[-2000:]


def start_workers(root, name, *extra):
    """Two training processes on 127.0.0.1 joined by TF_CONFIG (worker 0 is the chief)."""
    args = [*plain_arithmetic(root, name), "--strategy", "multiworker", "--batch-size", "2",
            *extra]
    return start_localhost_workers(
        [sys.executable, ROOT / "train_unet_xception_resnetblock.py", *map(str, args)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lone_worker(root, *extra):
    """Worker 0 of a cluster of two whose worker 1 never starts."""
    args = [*plain_arithmetic(root, "lone"), "--strategy", "multiworker", "--batch-size", "2",
            *extra]
    return subprocess.Popen(
        [sys.executable, ROOT / "train_unet_xception_resnetblock.py", *map(str, args)],
        cwd=ROOT, env={**os.environ, "TF_CONFIG": localhost_tf_config(free_ports(2), 0)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_worker_whose_peer_never_starts_gives_up_with_one_line(patch_work):
    """TensorFlow waits for every task forever, in C++ code no Python exception reaches."""
    proc = lone_worker(patch_work, "--cluster-timeout", "3")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert err.rstrip().splitlines()[-1].startswith(
        "error: the cluster did not form within 3 s (worker 0 at 127.0.0.1:")
    assert "Traceback" not in err and not (patch_work / "lone").exists()


def test_a_worker_whose_port_is_taken_stops_with_one_line(patch_work):
    """A run still going or another job on the node holds the port: TensorFlow's 'Could not
    start gRPC server' came as a traceback."""
    import socket
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        ports = [held.getsockname()[1], *free_ports(1)]
        args = [*plain_arithmetic(patch_work, "taken"), "--strategy", "multiworker",
                "--batch-size", "2", "--cluster-timeout", "30"]
        result = subprocess.run(
            [sys.executable, ROOT / "train_unet_xception_resnetblock.py", *map(str, args)],
            cwd=ROOT, env={**os.environ, "TF_CONFIG": localhost_tf_config(ports, 0)},
            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.rstrip().splitlines()[-1].startswith(
        f"error: the cluster could not start (Could not start gRPC server): check that this "
        f"task's port (127.0.0.1:{ports[0]}) is free")
    assert "Traceback" not in result.stderr and not (patch_work / "taken").exists()


def test_ctrl_c_while_waiting_for_the_cluster_ends_the_run_at_once(patch_work):
    proc = lone_worker(patch_work, "--cluster-timeout", "120")
    for line in proc.stdout:
        if line.startswith("waiting for the 2 tasks of the cluster to join"):
            break
    time.sleep(2)       # into TensorFlow's wait
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, err[-3000:]     # ended by it, as a shell shows
    assert "Traceback" not in err and not (patch_work / "lone").exists()


def test_a_worker_whose_chief_dies_mid_training_stops_with_one_line(patch_work):
    """kill -9 of the chief (a node lost, a preemption): the other worker's next all-reduce
    failed with a TensorFlow traceback of a page, the way back nowhere in it."""
    import time
    procs = start_workers(patch_work, "orphan", "--epochs", "4", "--steps-per-epoch", "3")
    meta = patch_work / ".orphan.worker1" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 600
    while not meta.is_file():
        assert time.monotonic() < deadline and procs[1].poll() is None
        time.sleep(0.5)
    procs[0].kill()
    procs[0].communicate()
    out = procs[1].communicate(timeout=300)[0]
    assert procs[1].returncode == 2, out[-3000:]
    assert out.rstrip().splitlines()[-1].startswith(
        "error: a task of the cluster stopped or cannot be reached any more during "), out[-3000:]
    assert "Traceback" not in out


@pytest.mark.parametrize("options", [(["--lr", "0.01"], ["--lr", "0.05"]), ([], ["--restart"])],
                         ids=["lr", "restart-on-one"])
def test_workers_started_with_other_options_are_refused_on_every_task(patch_work, options):
    """Worker 0 with --lr 0.01, worker 1 with --lr 0.05: the chief wrote a model of mixed
    steps and said done, the other worker ended in a traceback. --restart on one task alone
    trains anew there while the others resume."""
    args = [*plain_arithmetic(patch_work, "mixed"), "--strategy", "multiworker",
            "--batch-size", "2"]
    command = [sys.executable, ROOT / "train_unet_xception_resnetblock.py", *map(str, args)]
    ports = free_ports(2)
    procs = [subprocess.Popen([*command, *extra], cwd=ROOT, text=True,
                              env={**os.environ, "TF_CONFIG": localhost_tf_config(ports, i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for i, extra in enumerate(options)]
    for proc in procs:
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode == 2, out[-3000:]
        assert out.rstrip().splitlines()[-1].startswith(
            "error: the tasks of the cluster were started with other options"), out[-3000:]
        assert "Traceback" not in out
    assert not (patch_work / "mixed" / "config.json").exists()


def test_a_task_that_refuses_to_train_tells_the_others(patch_work):
    """Worker 1's model folder holds a file of the user's: it refused before the cluster
    formed, and the chief waited for it until --cluster-timeout, then said only that the
    cluster did not form. Each task's model folder may be its own (a disk per node)."""
    foreign = patch_work / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("the user's")
    ports = free_ports(2)
    procs = []
    for index, name in enumerate(["told", "foreign"]):
        args = [*plain_arithmetic(patch_work, name), "--strategy", "multiworker",
                "--batch-size", "2", "--cluster-timeout", "300"]
        procs.append(subprocess.Popen(
            [sys.executable, ROOT / "train_unet_xception_resnetblock.py", *map(str, args)],
            cwd=ROOT, env={**os.environ, "TF_CONFIG": localhost_tf_config(ports, index)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errors = []
    for proc in procs:
        err = proc.communicate(timeout=280)[1]
        assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
        errors.append(err.rstrip().splitlines())
    assert errors[0][-1] == ("error: worker 1 of the cluster refused to train (its output says "
                             "why): mend that and start every task again"), errors[0][-5:]
    assert any(line.startswith(f"error: {foreign} holds files that training does not write "
                               "(notes.txt)") for line in errors[1]), errors[1]
    assert errors[1][-1] == ("error: this task refused to train (the error above); the other "
                             "tasks of the cluster were told and stop too"), errors[1][-5:]
    assert not (patch_work / "told").exists()
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def finish(procs, timeout=600):
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return outputs


def test_two_workers_train_as_one_process_and_resume_after_a_kill(patch_work, one_device):
    """Two workers' first step is a one-process step on the same global batch. kill -9 one
    worker after the first epoch; the other is stuck at the next all-reduce and is killed
    too; the same two commands rerun finish the training from the backup, both workers end
    with the same weights, the chief alone wrote the model folder and the other worker's
    scratch is gone."""
    import time
    model_dir = patch_work / "workers"
    extra = ("--epochs", "3", "--steps-per-epoch", "1", "--keep-snapshots")
    procs = start_workers(patch_work, "workers", *extra)
    backups = [model_dir / "backup", patch_work / ".workers.worker1" / "backup"]

    def epochs_backed_up(folder):
        meta = folder / "training_metadata.json"
        try:
            return json.loads(meta.read_text())["epoch"]
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.monotonic() + 600
    while min(epochs_backed_up(b) for b in backups) < 1:
        assert time.monotonic() < deadline and procs[0].poll() is None
        time.sleep(0.5)
    procs[1].kill()
    time.sleep(5)
    procs[0].kill()
    for p in procs:
        p.communicate()
    assert (model_dir / "backup").is_dir()
    outputs = finish(start_workers(patch_work, "workers", *extra))
    assert "(resuming)" in outputs[0]
    with open(model_dir / "log.csv") as f:
        epochs = [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]
    assert epochs == [0, 1, 2]
    digests = [line.split()[-1] for out in outputs for line in out.splitlines()
               if line.startswith("final weights sha256")]
    assert len(digests) == 2 and digests[0] == digests[1]
    net = keras.saving.load_model(model_dir / "snapshots" / "epoch_001.h5", compile=False)
    one, _, apart = one_device
    same = largest_difference(one, [w.numpy() for w in net.trainable_weights])
    assert same < apart / 100, (same, apart)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["result"]["epochs_done"] == 3
    assert config["distribution"]["replicas"] == 2
    assert config["distribution"]["global_batch"] == 4
    assert not (model_dir / "backup").exists()
    # The workers' scratch folders are gone; the lock files stay, emptied, as .work.lock does.
    assert sorted(p.name for p in patch_work.glob(".workers.*")) == [".workers.lock",
                                                                    ".workers.worker1.lock"]
    assert all(p.read_text() == "" for p in patch_work.glob(".workers.*"))
    # The same commands once more: the chief's folder decides for the cluster.
    outputs = finish(start_workers(patch_work, "workers", *extra))
    assert "already holds the model this command trains; nothing to do" in outputs[0]
    assert "the chief's model folder holds the model this command trains already" in outputs[1]
