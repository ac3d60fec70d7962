"""What this machine computes with: CPU vector flags, GPUs, and the numeric precision to use.

--precision picks the Keras dtype policy of training and prediction:
  fp32   float32 everywhere (the original)
  bf16   mixed_bfloat16: bfloat16 convolutions, float32 weights, BatchNorm statistics,
         logits and loss; a training step 0.6-0.75x the fp32 time on CPUs with native
         bf16 (AVX-512 BF16 or AMX; bench/speed.py), slower than fp32 on CPUs without it
  fp16   mixed_float16, for GPUs with tensor cores (Keras adds loss scaling)
  auto   fp16 where TensorFlow sees a GPU; on a CPU with native bf16 flags, bf16 where a
         3x3 convolution measured at start-up runs at least BF16_MIN_SPEEDUP times faster in
         bf16 than in fp32, else fp32. The flags alone do not tell: on a 2-core Intel Xeon
         with AVX-512 BF16 (no AMX) TensorFlow's bf16 convolutions ran at 0.63x the fp32
         speed and a training step 1.1-1.3x slower, where an AMD EPYC with the same flags
         ran bf16 matmuls 2x faster (bench/README.md)

Before TensorFlow loads, prepare_tensorflow() turns its oneDNN kernels on for every x86 CPU.
On Linux TensorFlow enables them by itself only where it sees VNNI (AVX-512 or AVX), AVX-512
BF16 or AMX (tensorflow/core/util/port.cc); on a 2-core AMD EPYC with only AVX2, oneDNN's
kernels took 0.79-0.83x the time of TensorFlow's own for a fp32 training step and 0.84-0.93x
for a frame (bench/bench_onednn.py, bench/README.md).
"""
import math
import os
import platform
import time
from pathlib import Path

from cli import count_of

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# bf16 rounds the activations; it must buy at least this much speed to be worth it.
BF16_MIN_SPEEDUP = 1.2


def is_x86():
    return platform.machine().lower() in ("x86_64", "amd64")


def prepare_tensorflow(log_level="3"):
    """Set what TensorFlow reads once, when it loads; call before anything imports it.
    A value the user exported is kept (TF_ENABLE_ONEDNN_OPTS=0 turns oneDNN off)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", log_level)
    if is_x86():
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def onednn_enabled():
    """Whether the TensorFlow loaded here runs oneDNN kernels (None where it cannot say)."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):     # a private API: other builds may lack it
        return None


def _cpuinfo(key):
    """The first value of a /proc/cpuinfo field (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_flags():
    """The CPU's feature flags (empty where /proc/cpuinfo has none)."""
    return set((_cpuinfo("flags") or "").split())


def cpu_name():
    return _cpuinfo("model name") or platform.processor() or "unknown"


def cpu_has_native_bf16():
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)


def gpu_names():
    import tensorflow as tf
    return [tf.config.experimental.get_device_details(d).get("device_name", d.name)
            for d in tf.config.list_physical_devices("GPU")]


def bf16_conv_speedup(repeats=8):
    """How many times faster a 3x3 convolution of 8 x 64 x 64 x 64 activations (the kind and
    size of work of the network's layers) runs in bfloat16 than in float32 here, measured
    now: the best of `repeats` runs of each, interleaved so that load from elsewhere slows
    both alike (about 0.5 s on 2 cores)."""
    import tensorflow as tf
    x, kernel = tf.random.normal((8, 64, 64, 64)), tf.random.normal((3, 3, 64, 64))
    conv = tf.function(lambda a, k: tf.nn.conv2d(a, k, 1, "SAME"))
    inputs = {"float32": (x, kernel),
              "bfloat16": (tf.cast(x, tf.bfloat16), tf.cast(kernel, tf.bfloat16))}
    best = dict.fromkeys(inputs, math.inf)
    for a, k in inputs.values():
        conv(a, k).numpy()      # traced and warmed up outside the timing
    for _ in range(repeats):
        for dtype, (a, k) in inputs.items():
            start = time.perf_counter()
            conv(a, k).numpy()
            best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best["float32"] / best["bfloat16"]


def resolve_precision(choice, speedup=None):
    """(fp32, bf16 or fp16, why) for a --precision choice on this machine; why is None
    unless auto weighed bf16 against fp32, by `speedup` where a caller has measured
    bf16_conv_speedup already, else by measuring it now."""
    if choice != "auto":
        return choice, None
    if gpu_names():
        return "fp16", None
    if not cpu_has_native_bf16():
        return "fp32", None
    speedup = bf16_conv_speedup() if speedup is None else speedup
    precision = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return precision, (f"--precision auto: {precision}; this CPU's bfloat16 convolutions run "
                       f"{speedup:.2f}x the float32 speed (bf16 from {BF16_MIN_SPEEDUP}x)")


def use_precision(choice):
    """Set Keras' global dtype policy for a --precision choice; returns fp32, bf16 or fp16."""
    import keras
    precision, why = resolve_precision(choice)
    if why:
        print(why)
    if precision == "bf16" and not cpu_has_native_bf16() and not gpu_names():
        print("note: this CPU has no native bf16 (AVX-512 BF16 or AMX); --precision bf16 is "
              "emulated here and slower than fp32")
    if precision == "fp16" and not gpu_names():
        print("note: --precision fp16 is for GPUs; a CPU emulates float16 and runs it many times "
              "slower than fp32 (auto picks what this CPU runs fastest)")
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    return precision


def keep_nan_visible():
    """Turn grappler's remapper off for the graphs this process traces from now on.

    It fuses each fused BatchNorm of a training step with the ReLU after it (Xception's)
    into one oneDNN kernel whose ReLU turns NaN into 0: a weight gone NaN then gave a finite
    loss, and training's divergence guard saw it only in the weights at the epoch's end,
    after the epoch had trained on zeros. A training step measured no slower without it
    (bench/README.md, "Fused BatchNorm")."""
    import tensorflow as tf
    tf.config.optimizer.set_experimental_options({"remapping": False})


def add_precision_option(group):
    group.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="numeric precision: fp32; bf16 (bfloat16 compute, float32 weights "
                            "and loss; faster on CPUs with AVX-512 BF16 or AMX); fp16 "
                            "(GPUs); auto = fp16 on a GPU, bf16 where the CPU has native bf16 "
                            f"and runs it at least {BF16_MIN_SPEEDUP}x faster than fp32 "
                            "(measured at start-up), else fp32 (default: %(default)s)")


def matmul_gflops(dtype="float32", size=2048, repeats=8):
    """GFLOP/s of a size x size matrix product in dtype (float32 or bfloat16), the best of
    several runs measured now."""
    import tensorflow as tf
    a = tf.cast(tf.random.normal((size, size)), dtype)
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, a).numpy()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, a).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def cpu_summary():
    """The CPU, its cores and vector flags (no TensorFlow needed)."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "cpu_flags": {f: f in flags for f in VECTOR_FLAGS}}


def machine_summary():
    """CPU, its vector flags, GPUs, whether TensorFlow runs oneDNN kernels, and (measured
    now) the fp32 and bf16 matmul rates and the bf16 convolution speed-up that --precision
    auto decides by."""
    return {**cpu_summary(), "gpus": gpu_names(), "onednn": onednn_enabled(),
            "matmul_gflops": {"fp32": round(matmul_gflops("float32"), 1),
                              "bf16": round(matmul_gflops("bfloat16"), 1)},
            "bf16_conv_speedup": round(bf16_conv_speedup(), 2)}


def cpu_line(summary):
    """The CPU, its cores and vector flags, in one line."""
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in summary["cpu_flags"].items())
    return f"{summary['cpu']}, {count_of(summary['cpu_cores'], 'core')}; {flags}"


def machine_line(summary):
    rates = summary["matmul_gflops"]
    line = f"{cpu_line(summary)}; matmul {rates['fp32']} GFLOP/s fp32, {rates['bf16']} bf16"
    if summary.get("onednn") is not None:
        line += f"; oneDNN {'on' if summary['onednn'] else 'off'}"
    if "bf16_conv_speedup" in summary:
        line += f"; bf16 convolution {summary['bf16_conv_speedup']}x fp32"
    if summary["gpus"]:
        line += f"; GPUs: {', '.join(summary['gpus'])}"
    return line
