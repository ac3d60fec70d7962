"""Training over several machines with tf.distribute.MultiWorkerMirroredStrategy, where
Keras' model.fit and model.evaluate do not run (keras-team/keras#20585: they reduce scalar
metrics along an axis they lack, tensorflow#72388). This loop runs the model's own
train_step and test_step through strategy.run (the same loss, metrics and optimizer as
fit) and calls the same callbacks at the same moments; the metrics' totals are summed over
every replica of every worker when read."""
import os
import shutil
import signal
import threading
from contextlib import contextmanager

import numpy as np
import tensorflow as tf

from cli import PipelineError, agreeing, count_of
from distribute import read_tf_config


# What TensorFlow raises on a cluster it cannot use (a task outside the cluster, a chief-less
# chief, SLURM ranks beyond its tasks, an nvidia-smi that fails to count a node's GPUs): the
# user's to mend.
CLUSTER_ERRORS = (KeyError, IndexError, TypeError, ValueError, RuntimeError, OSError)


def make_multiworker_strategy(cluster, timeout):
    """MultiWorkerMirroredStrategy over the cluster that TF_CONFIG or SLURM describes, given
    up after timeout seconds (None: no limit) without every worker."""
    if cluster == "slurm":
        try:
            resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(**slurm_gpus())
        except CLUSTER_ERRORS as err:
            raise PipelineError(f"--cluster slurm: not inside a SLURM job step, or one this "
                                f"node cannot join ({err}); start the training with "
                                "srun") from None
    else:
        check_tf_config()
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        if not resolver.cluster_spec().as_dict():
            raise PipelineError("--strategy multiworker needs the cluster in TF_CONFIG (see "
                                "README, 'Running on several GPUs or a cluster') or "
                                "--cluster slurm")
    try:
        tasks = [f"{kind} {index} at {address}" for kind, addresses in
                 sorted(resolver.cluster_spec().as_dict().items())
                 for index, address in enumerate(addresses)]
        if timeout and resolver.task_type in COORDINATED_JOBS:
            register_within(resolver.cluster_spec(), timeout)
        print(f"waiting for the {count_of(len(tasks), 'task')} of the cluster to join"
              + (f" (at most {timeout:g} s)" if timeout else ""), flush=True)
        with ended_by_ctrl_c():
            return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except tf.errors.DeadlineExceededError:
        raise PipelineError(f"the cluster did not form within {timeout:g} s ({', '.join(tasks)}): "
                            "start the training on every task, check that each can reach the "
                            "others' host and port, or give a longer --cluster-timeout") from None
    except tf.errors.OpError as err:
        # Its own server not started (the port held by another process: a run still going,
        # another job on the node), or a peer's answer that is not TensorFlow's.
        own = resolver.cluster_spec().task_address(resolver.task_type, resolver.task_id)
        raise PipelineError(f"the cluster could not start ({err.message.strip()}): check that "
                            f"this task's port ({own}) is free, that no other run of this "
                            "task is going, and that each task reaches the others' host and "
                            "port") from None
    except CLUSTER_ERRORS as err:
        raise PipelineError(f"--cluster {cluster}: TensorFlow cannot use this cluster: "
                            f"{err}") from None


def slurm_gpus():
    """SlurmClusterResolver's GPU options for this node. By default it counts the node's
    GPUs with nvidia-smi, which a CPU node lacks (no cluster at all), and gives each task
    GPUs of its own by setting CUDA_VISIBLE_DEVICES (where "" or -1 hid them all, a GPU
    after all). Without GPUs: a GPU per task for its count, and CUDA_VISIBLE_DEVICES
    left as it is."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible not in ("", "-1") and (visible is not None or shutil.which("nvidia-smi")):
        return {}
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
        expand_tasks_per_node)
    tasks = max(expand_tasks_per_node(os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1")))
    return {"gpus_per_node": tasks, "gpus_per_task": 1, "auto_set_gpu": False}


# The jobs whose tasks TensorFlow's coordination service waits for.
COORDINATED_JOBS = ("chief", "worker")


def register_within(cluster_spec, timeout):
    """Make TensorFlow give up (DeadlineExceededError) where not every task of the cluster
    has joined within timeout seconds: by default it waits forever. This is the coordination
    service MultiWorkerMirroredStrategy sets up, which it leaves alone where one is set up
    already, with the limit added."""
    from tensorflow.compiler.xla.tsl.protobuf.coordination_config_pb2 import CoordinatedJob
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context
    jobs = [CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in COORDINATED_JOBS if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs,
        cluster_register_timeout_in_ms=max(1, round(timeout * 1000)))    # 0 would mean none
    context.context().coordination_service.cluster_register_with_barrier = True


@contextmanager
def ended_by_ctrl_c():
    """While TensorFlow waits for the cluster it holds the interpreter in C++, where Python's
    handler of SIGINT never runs: a Ctrl-C went unheard. Its default action ends the process
    at once instead; nothing has been written by then. (SIGTERM TensorFlow catches itself,
    as notice of a preemption: --cluster-timeout bounds that wait.)"""
    if threading.current_thread() is not threading.main_thread():
        yield       # handlers belong to the main thread
        return
    earlier = signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, earlier)


@contextmanager
def cluster_kept(what):
    """A task that stops mid-run (killed, its node lost, preempted) fails the others' next
    all-reduce with a TensorFlow traceback: one line instead, with the way back."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError):
        raise PipelineError(f"a task of the cluster stopped or cannot be reached any more "
                            f"during {what}: start the same command on every task again (the "
                            "training resumes from the last epoch backed up)") from None


def check_tf_config():
    """TF_CONFIG as TensorFlow needs it, or one line naming what is wrong: JSON, a cluster of
    task lists, and this process's task (type and index) in it."""
    config = read_tf_config("mend it (see README, 'Running on several GPUs or a cluster')")
    if config is None:
        return
    cluster = config.get("cluster") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not all(isinstance(v, list) for v in cluster.values()):
        raise PipelineError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...], ...}')
    task = config.get("task")
    if not isinstance(task, dict):
        raise PipelineError('TF_CONFIG needs this process\'s "task": {"type": "worker", '
                            '"index": 0}')
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        listed = ", ".join(f"{k} 0..{len(v) - 1}" for k, v in cluster.items())
        raise PipelineError(f"TF_CONFIG's task {kind} {index} is not in its cluster ({listed})")


def is_chief(strategy):
    """The worker that writes the model folder: the 'chief' task, else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def agree_to_start(strategy, fingerprint, restart, refused=False, done=False):
    """Whether the chief's model folder holds the model the command trains already (done:
    every task then stops, as one process does), agreed by every task at the same point.
    Refused on every task first: a cluster one of whose tasks refused to train (its work or
    model folder; refused, its fingerprint None), where the others waited for it until
    --cluster-timeout; and one whose tasks were started with other settings or on other
    patches (the training's settings_fingerprint, 16 hex digits), or with --restart on some
    alone (the others resume): the chief wrote one run's model from steps that mixed them,
    unsaid. A refusing task learns nothing here: it raises its own refusal after."""
    digits = fingerprint or "0" * 16
    # Columns: the fingerprint in 4 parts and --restart (which must agree), then
    # refused, done and the task's number.
    local = tf.constant([int(digits[i:i + 4], 16) for i in range(0, 16, 4)]
                        + [float(restart), float(refused), float(done), task_number(strategy)],
                        tf.float32)
    every = every_replicas(strategy, local).numpy()
    must_agree, refused_by, done_by, task = every[:, :5], every[:, 5], every[:, 6], every[:, 7]
    if refused:
        return False
    refusing = sorted(set(task[refused_by == 1].tolist()))
    if refusing:
        tasks = [task_named(number) for number in refusing]
        raise PipelineError(f"{' and '.join(tasks)} of the cluster refused to train "
                            f"({agreeing(len(tasks), 'its', 'their')} output says why): mend "
                            "that and start every task again")
    if not (must_agree == must_agree[0]).all():
        raise PipelineError("the tasks of the cluster were started with other options or on "
                            "other patches: start every task with the same command on the "
                            "same work folder's patches (only the folders' paths may differ; "
                            "--restart on every task or on none)")
    return bool(done_by.any())


def task_number(strategy):
    """-1 for the chief task, a worker's index for a worker: a number every_replicas can
    gather."""
    resolver = strategy.cluster_resolver
    return -1 if resolver.task_type == "chief" else resolver.task_id


def task_named(number):
    return "the chief" if number < 0 else f"worker {int(number)}"


def every_replicas(strategy, values):
    """values as every replica of every worker holds them, one row each."""
    return strategy.gather(strategy.run(lambda: tf.identity(values)[None]), axis=0)


def worker_name(strategy):
    resolver = strategy.cluster_resolver
    return f"{resolver.task_type}{resolver.task_id}"


def weights_digest(model):
    """sha256 of every weight of the model as this process holds it: equal digests on all
    workers show that their copies took the same steps."""
    import hashlib
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def worker_slices(strategy, dataset, global_batch):
    """The global batches of `dataset` as one process takes them, each worker feeding its
    replicas from its own slice of every batch: N workers step through the same data as
    one process, whatever tf.data's auto-sharding would do."""
    per_replica = global_batch // strategy.num_replicas_in_sync

    def local(context):
        size = global_batch // context.num_input_pipelines
        start = context.input_pipeline_id * size

        def own_slice(x, y):
            return x[start:start + size], y[start:start + size]

        sliced = dataset.map(own_slice)
        if size == per_replica:
            return sliced
        return sliced.unbatch().batch(per_replica, drop_remainder=True)

    return strategy.distribute_datasets_from_function(local)


class WorkerLoop:
    """model.fit and model.evaluate for a multi-worker strategy."""

    def __init__(self, model, strategy, global_batch, schedule=None):
        self.model, self.strategy, self.schedule = model, strategy, schedule
        self.global_batch = global_batch
        self._train = tf.function(self._train_batch, reduce_retracing=True)
        self._test = tf.function(self._test_batch, reduce_retracing=True)
        self._agree_fn = tf.function(self._agree_replicas)

    def _train_batch(self, iterator):
        self.strategy.run(self.model.train_step, args=(next(iterator),))

    def _test_batch(self, iterator):
        self.strategy.run(self.model.test_step, args=(next(iterator),))

    def _agree_replicas(self, values):
        # tf.distribute reduces only by SUM and MEAN: the largest comes from a gather.
        return tf.reduce_max(every_replicas(self.strategy, values), axis=0)

    def _agree(self):
        """Every worker takes the largest of the workers' schedule progress and stop flags,
        so all copies of the weights take the same step and stop at the same step (each
        worker's clock reads a little differently)."""
        progress = self.schedule.progress if self.schedule is not None else None
        local = [float(progress.numpy()) if progress is not None else 0.0,
                 float(bool(self.model.stop_training))]
        agreed = self._agree_fn(tf.constant(local, tf.float32)).numpy()
        if progress is not None:
            progress.assign(agreed[0])
        self.model.stop_training = bool(agreed[1])

    def _build(self, dataset):
        """Model, loss and metrics built before the first step, as fit does (Keras' own
        symbolic build), so no variable is made inside a replica; the training script has
        built the optimizer."""
        with self.strategy.scope():
            self.model._symbolic_build(data_batch=next(iter(dataset)))

    def results(self):
        return {k: float(np.asarray(v)) for k, v in self.model.get_metrics_result().items()}

    def step_logs(self):
        """The epoch's running loss, as fit hands callbacks after each step: the divergence
        guard tells a NaN step from it. One metric, not all: each read sums over workers."""
        loss = next(m for m in self.model.metrics if m.name == "loss")
        return {"loss": float(np.asarray(loss.result()))}

    def fit(self, dataset, epochs, steps_per_epoch, callbacks):
        """model.fit(dataset, epochs, steps_per_epoch, callbacks) for a dataset of global
        batches of global_batch."""
        from keras.callbacks import CallbackList
        callbacks = CallbackList(callbacks, model=self.model, add_history=False)
        self._build(dataset)
        iterator = iter(worker_slices(self.strategy, dataset, self.global_batch))
        self.model.stop_training = False
        self.model._initial_epoch = None
        callbacks.on_train_begin()
        first = self.model._initial_epoch or 0      # set by BackupAndRestore on a resume
        with cluster_kept("training"):
            self._epochs(iterator, first, epochs, steps_per_epoch, callbacks)
        callbacks.on_train_end()

    def _epochs(self, iterator, first, epochs, steps_per_epoch, callbacks):
        for epoch in range(first, epochs):
            self.model.reset_metrics()
            callbacks.on_epoch_begin(epoch)
            for step in range(steps_per_epoch):
                callbacks.on_train_batch_begin(step)
                self._agree()
                self._train(iterator)
                callbacks.on_train_batch_end(step, self.step_logs())
                self._agree()
                if self.model.stop_training:
                    break
            logs = self.results()
            callbacks.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break

    def evaluate(self, dataset, steps):
        """model.evaluate(dataset, steps=steps, return_dict=True) on every worker."""
        self.model.reset_metrics()
        iterator = iter(worker_slices(self.strategy, dataset, self.global_batch))
        with cluster_kept("validation"):
            for _ in range(steps):
                self._test(iterator)
            return self.results()
