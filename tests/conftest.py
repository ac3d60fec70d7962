"""Shared test set-up."""
import pytest

import hardware

# The tests that train or predict in-process load TensorFlow as the scripts do.
hardware.prepare_tensorflow()


def pytest_collection_modifyitems(items):
    """Modules marked `trains` (minutes each) run first: with run_tests.sh's two workers, the
    rest then fills in around them instead of one worker training alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("trains") is None)


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Training and prediction set Keras' global dtype policy (--precision); a test that ran
    them in-process must not leave bfloat16 to the next test's models."""
    yield
    import sys
    if "keras" in sys.modules:
        sys.modules["keras"].mixed_precision.set_global_policy("float32")


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """One model folder trained on synthetic 64 px patches (3 epochs of 15 steps, precise BN,
    SWA of 2 snapshots) for every test that needs a trained model: (root, the argv that
    trained it). Tests may read it and rerun its command, never change it."""
    pytest.importorskip("keras")
    import train_unet_xception_resnetblock as train
    from synthetic_patches import make_patch_set
    root = tmp_path_factory.mktemp("trained")
    (root / "data").mkdir()
    (root / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(root / "work", 200)
    args = ["--data-dir", str(root / "data"), "--work-dir", str(root / "work"),
            "--weights", "none", "--epochs", "3", "--steps-per-epoch", "15", "--val-steps", "2",
            "--bn-batches", "8", "--swa-epochs", "2", "--lr", "0.01", "--verbose", "0"]
    train.main(args)
    return root, args
