"""How training spreads over devices: the tf.distribute strategy that --strategy names, and
BatchNorm statistics synchronised across its replicas."""
from cli import PipelineError

STRATEGIES = ("auto", "one", "mirrored", "multiworker")   # multiworker: worker_loop.py


def split_cpu(devices):
    """Split the CPU into `devices` logical devices (they share its cores): a real
    multi-replica strategy without GPUs, for tests and for measuring a strategy's overhead.
    Must come before TensorFlow runs anything."""
    import tensorflow as tf
    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * devices)
        except RuntimeError:
            raise PipelineError("--cpu-devices must be set before TensorFlow starts; run the "
                                "training script on its own") from None


def make_strategy(choice, cpu_devices=1):
    """The strategy for --strategy: one (the default device), mirrored (every visible GPU,
    else every logical CPU device), auto (mirrored where there are several GPUs or
    --cpu-devices, else one)."""
    import tensorflow as tf
    split_cpu(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if choice == "one" or (choice == "auto" and len(devices) < 2):
        return tf.distribute.get_strategy()
    read_tf_config(f"--strategy {choice} does not use it: unset it, or mend it")
    if gpus:
        return tf.distribute.MirroredStrategy(devices)
    # NCCL is for GPUs; CPU replicas sum their gradients on one device.
    return tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def read_tf_config(advice):
    """TF_CONFIG's content, None where it is unset or blank (`export TF_CONFIG=`, a job
    script's empty variable), which is then taken out of the environment: TensorFlow
    json-parses it wherever it is set, MirroredStrategy's too (which then ignores it), and
    a blank or broken one stopped the run there with a traceback. advice: what to do about
    one that is not JSON."""
    import json
    import os
    text = os.environ.get("TF_CONFIG", "")
    if not text.strip():
        os.environ.pop("TF_CONFIG", None)
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise PipelineError(f"TF_CONFIG is not JSON ({err}); {advice}") from None


def describe(strategy):
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return "one device"
    return f"{type(strategy).__name__} over {replicas} replicas"


def replica_sum(x):
    """The sum of x over all replicas, differentiable (its gradient is the sum of the
    upstream gradients over the replicas). ReplicaContext.all_reduce does the same, but its
    tf.custom_gradient walks the whole graph at each call in graph mode (the other
    replicas' part included), which made tracing the 85-BatchNorm network take over ten
    minutes; the sums here take stop_gradient'ed inputs, so that walk ends at once."""
    import tensorflow as tf
    context = tf.distribute.get_replica_context()

    def summed(value):
        def reduce(strategy, per_replica):
            return strategy.extended.batch_reduce_to(
                tf.distribute.ReduceOp.SUM, [(per_replica, per_replica)])[0]
        return context.merge_call(reduce, args=(tf.stop_gradient(value),))

    @tf.custom_gradient
    def all_sum(value):
        return summed(value), summed
    return all_sum(x)


def global_moments(layer, inputs, mask=None):
    """Mean and variance of a BatchNorm layer's inputs over the global batch: one summed
    vector (sums, sums of squares, pixel count) per layer and step."""
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1 or mask is not None:
        return type(layer)._moments(layer, inputs, mask)
    x = tf.cast(inputs, "float32")           # bf16 sums of squares lose too much
    axes = layer._reduction_axes
    channels = x.shape[-1]
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
    totals = replica_sum(tf.concat([tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes),
                                    tf.reshape(count, [1])], axis=0))
    mean = totals[:channels] / totals[-1]
    variance = tf.maximum(totals[channels:2 * channels] / totals[-1] - tf.square(mean), 0.0)
    return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)


def synchronize_batchnorm(model):
    """Every BatchNorm layer normalises with the statistics of the global batch, summed
    over the replicas, so a step on N replicas is the step one device makes on the same
    global batch. Set on the layers in memory only: a saved model holds plain BatchNorm."""
    import types

    import keras
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            if not hasattr(type(layer), "_moments"):
                raise PipelineError("this Keras version's BatchNormalization has no _moments; "
                                    "train with --strategy one")
            layer._moments = types.MethodType(global_moments, layer)
            # The fused kernel makes its own, per-replica moments.
            layer.fused = False


def start_localhost_workers(argv, count=2, **popen_options):
    """`count` processes running argv on this machine, joined into one cluster by TF_CONFIG
    (worker 0 is the chief): --strategy multiworker without a second machine."""
    import os
    import subprocess
    ports = free_ports(count)
    return [subprocess.Popen(argv, env={**os.environ, "TF_CONFIG": localhost_tf_config(ports, i)},
                             **popen_options) for i in range(count)]


def localhost_tf_config(ports, index):
    """TF_CONFIG for worker `index` of a cluster of processes on this machine, one per port
    (every worker of the cluster gets the same ports)."""
    import json
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def free_ports(count):
    """`count` TCP ports on 127.0.0.1 that nothing listens on at the moment."""
    import socket
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
