"""Why the training script re-estimates BatchNorm statistics ("precise BN").

Trains the network twice on the same small synthetic task from the same seed, once with
precise BN (--bn-batches 8) and once with Keras' moving averages (--bn-batches 0), and
prints each model's held-out mean IoU in inference mode (what validation and prediction
use) beside its IoU with batch statistics. Takes about 3 minutes on 2 CPU cores.

    python bench/bench_precise_bn.py
"""
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "data")]

import hardware  # noqa: E402

hardware.prepare_tensorflow()

import keras  # noqa: E402

import train_unet_xception_resnetblock as train  # noqa: E402
from synthetic_patches import held_out, make_patch_set, mean_iou  # noqa: E402


def train_and_score(root, bn_batches):
    (root / "data").mkdir(parents=True)
    (root / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(root / "work", 200)
    train.main(["--data-dir", str(root / "data"), "--work-dir", str(root / "work"),
                "--weights", "none", "--epochs", "3", "--steps-per-epoch", "15",
                "--val-steps", "2", "--bn-batches", str(bn_batches), "--swa-epochs", "2",
                "--lr", "0.01", "--verbose", "0"])
    model = keras.saving.load_model(
        root / "work" / "weights" / f"{train.WEIGHTS_STEM}_best.h5", compile=False)
    x, y = held_out()
    return mean_iou(model, x, y, training=False), mean_iou(model, x, y, training=True)


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bn_batches in (8, 0):
            rows.append((bn_batches, *train_and_score(Path(tmp) / f"bn{bn_batches}", bn_batches)))
    print("held-out mean IoU, 3 epochs x 15 steps on the synthetic task of tests/test_train.py")
    print(f"{'--bn-batches':>12} {'inference mode':>15} {'batch statistics':>17} {'ratio':>6}")
    for bn_batches, infer, batch in rows:
        print(f"{bn_batches:>12} {infer:>15.3f} {batch:>17.3f} {infer / batch:>6.2f}")


if __name__ == "__main__":
    main()
