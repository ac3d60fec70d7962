"""--precision: which policy auto picks, and a model moved between precisions; the
environment TensorFlow loads with."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hardware

keras = pytest.importorskip("keras")


@pytest.mark.parametrize("flags, gpus, speedup, expected", [
    ({"avx2", "avx512f", "avx512_bf16"}, [], 1.9, "bf16"),
    ({"avx2", "amx_bf16"}, [], 3.0, "bf16"),
    # The flags, and bf16 slower than fp32 (measured: 0.63x on a 2-core Intel Xeon).
    ({"avx2", "avx512f", "avx512_bf16"}, [], 0.63, "fp32"),
    ({"avx2", "avx512f", "avx512_bf16"}, [], 1.1, "fp32"),
    ({"avx2", "avx512f"}, [], None, "fp32"),
    (set(), [], None, "fp32"),
    ({"avx2"}, ["NVIDIA H100"], None, "fp16"),
])
def test_auto_uses_bf16_only_where_the_cpu_runs_it_faster(monkeypatch, flags, gpus, speedup,
                                                           expected):
    def measured():
        assert speedup is not None, "measured where the flags or a GPU already decide"
        return speedup

    monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
    monkeypatch.setattr(hardware, "gpu_names", lambda: gpus)
    monkeypatch.setattr(hardware, "bf16_conv_speedup", measured)
    precision, why = hardware.resolve_precision("auto")
    assert precision == expected
    assert (why is None) == (speedup is None)
    if why:
        assert f"{speedup:.2f}x" in why and expected in why
    assert hardware.resolve_precision("fp32") == ("fp32", None)


def test_the_bf16_speedup_is_measured_here():
    speedup = hardware.bf16_conv_speedup(repeats=2)
    assert np.isfinite(speedup) and speedup > 0


def test_a_model_runs_in_the_precision_asked_for_with_the_same_weights():
    from model import build_model, with_precision
    keras.utils.set_random_seed(0)
    net = build_model((64, 64, 3), 3, weights=None)
    x = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    reference = np.asarray(net(x, training=False))
    bf16 = with_precision(net, "bf16")
    assert bf16.get_layer("block1_conv1").compute_dtype == "bfloat16"
    assert bf16.get_layer("logits").compute_dtype == "float32"
    assert all(w.dtype == "float32" for w in bf16.weights)
    out = np.asarray(bf16(x, training=False))
    assert out.dtype == np.float32
    # bfloat16 keeps 8 bits of mantissa: close, not equal.
    assert np.abs(out - reference).max() < 0.05 * np.abs(reference).max() + 1e-3
    back = with_precision(bf16, "fp32")
    np.testing.assert_allclose(np.asarray(back(x, training=False)), reference, atol=1e-5)


def test_precise_bn_statistics_stay_float32_under_bf16():
    """Keras' moments round bfloat16 statistics back to bfloat16; precise BN must not."""
    import model
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    keras.utils.set_random_seed(0)
    net = model.build_model((64, 64, 3), 2, weights=None)
    bn = net.get_layer("block1_conv1_bn")
    assert bn.input.dtype == "bfloat16"
    probe = model._batch_moments_model(net, [bn])
    mean, variance = probe(np.random.default_rng(0).random((2, 64, 64, 3), np.float32))
    assert mean.dtype == "float32" and variance.dtype == "float32"
    model.reestimate_batchnorm(net, iter([np.full((2, 64, 64, 3), 0.5, np.float32)] * 2), 2)
    assert bn.moving_mean.dtype == "float32"
    assert np.all(np.isfinite(bn.moving_variance.numpy()))


def test_a_sequential_model_changes_precision_too():
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(2, 3, padding="same")])
    from model import with_precision
    bf16 = with_precision(net, "bf16")
    assert bf16.layers[0].compute_dtype == "bfloat16"
    assert with_precision(bf16, "bf16") is bf16
    x = np.ones((1, 16, 16, 3), np.float32)
    np.testing.assert_allclose(np.asarray(bf16(x), np.float32), np.asarray(net(x)), atol=0.05)


def test_a_forced_precision_the_device_emulates_says_it_is_slow(monkeypatch, capsys):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    monkeypatch.setattr(hardware, "gpu_names", lambda: [])
    assert hardware.use_precision("bf16") == "bf16"
    assert "no native bf16" in capsys.readouterr().out
    assert hardware.use_precision("auto") == "fp32"
    assert capsys.readouterr().out == ""
    assert hardware.use_precision("fp16") == "fp16"
    assert "fp16 is for GPUs" in capsys.readouterr().out
    monkeypatch.setattr(hardware, "gpu_names", lambda: ["GPU:0"])
    assert hardware.use_precision("fp16") == "fp16"
    assert capsys.readouterr().out == ""


def test_prepare_tensorflow_turns_onednn_on_for_x86_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    hardware.prepare_tensorflow()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    hardware.prepare_tensorflow()
    assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    monkeypatch.setattr(hardware.platform, "machine", lambda: "aarch64")
    hardware.prepare_tensorflow()
    assert "TF_ENABLE_ONEDNN_OPTS" not in os.environ


ROOT = Path(hardware.__file__).resolve().parent
# Runs a script's module-level code (its imports, not its main), then imports TensorFlow
# where the script uses it, and prints what TensorFlow found in the environment when it
# first loaded.
WATCH_TENSORFLOW_LOAD = """
import importlib.abc, json, os, runpy, sys
seen = {}
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" and not seen:
            seen.update({k: os.environ.get(k)
                         for k in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")})
sys.meta_path.insert(0, Watch())
script = sys.argv[1]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="entry_point_check")
text = open(script).read()
if "import tensorflow" in text or "import keras" in text:
    import tensorflow
print(json.dumps({"loaded": bool(seen), **seen}))
"""


def entry_points():
    """Every script (a file with a main block) of the pipeline and of bench/."""
    return sorted(str(p.relative_to(ROOT)) for p in [*ROOT.glob("*.py"), *ROOT.glob("bench/*.py")]
                  if 'if __name__ == "__main__":' in p.read_text())


def test_every_script_prepares_tensorflow_before_it_loads():
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    loaded = []
    for script in entry_points():
        done = subprocess.run([sys.executable, "-c", WATCH_TENSORFLOW_LOAD, str(ROOT / script)],
                              env=env, cwd=ROOT, capture_output=True, text=True, check=True)
        found = json.loads(done.stdout.splitlines()[-1])
        if found["loaded"]:
            loaded.append(script)
            assert found["TF_CPP_MIN_LOG_LEVEL"] is not None, script
            assert found["TF_ENABLE_ONEDNN_OPTS"] == ("1" if hardware.is_x86() else None), script
    assert {"train_unet_xception_resnetblock.py", "predict_lovasz_loss.py",
            "bench/bench_precise_bn.py", "bench/speed.py"} <= set(loaded)


def test_the_machine_line_says_whether_onednn_ran():
    summary = {"cpu": "x", "cpu_cores": 2, "cpu_flags": {}, "gpus": [],
               "matmul_gflops": {"fp32": 1.0, "bf16": 1.0}}
    assert "oneDNN on" in hardware.machine_line({**summary, "onednn": True})
    assert "oneDNN off" in hardware.machine_line({**summary, "onednn": False})
    assert "oneDNN" not in hardware.machine_line({**summary, "onednn": None})


@pytest.mark.skipif(not hardware.is_x86(), reason="oneDNN is only turned on for x86 CPUs")
def test_an_exported_onednn_setting_is_kept():
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}
    code = "import predict_lovasz_loss, hardware, tensorflow; print(hardware.onednn_enabled())"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, cwd=ROOT, check=True)
    assert done.stdout.split()[-1] == "False"
