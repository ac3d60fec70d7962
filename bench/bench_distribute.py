"""What a tf.distribute strategy costs on this machine: training steps per second of one
process, of a mirrored strategy over two logical CPU devices, and of two worker processes
on localhost (MultiWorkerMirroredStrategy), all on the same global batch and the same cores,
as ratios to the one-process rate.

Each way trains twice from the sample data's patches (128 px), for S and 3S steps in one
epoch; the difference of the wall times over 2S steps is the time of a step, free of the
start-up, validation and saving that both runs share. The numbers say what the strategy's
all-reduces and synchronised BatchNorm cost when the replicas cannot run in parallel
(two replicas on two cores share them); on separate GPUs or machines the step time of
each replica is that of one device with its share of the batch, plus this overhead.

    python bench/bench_distribute.py [--steps 10] [--batch-size 8]
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hardware  # noqa: E402

hardware.prepare_tensorflow()

from distribute import start_localhost_workers  # noqa: E402


def run(args):
    done = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}")


def train_seconds(work, model_dir, steps, way, batch_size):
    """Wall seconds of one training run of `steps` steps the given way."""
    common = ["train_unet_xception_resnetblock.py", "--data-dir", "data", "--work-dir", work,
              "--model-dir", model_dir, "--weights", "none", "--epochs", "1",
              "--steps-per-epoch", steps, "--val-steps", "1", "--bn-batches", "0",
              "--swa-epochs", "0", "--verbose", "0"]
    start = time.perf_counter()
    if way == "one":
        run([*common, "--strategy", "one", "--batch-size", batch_size])
    elif way == "mirrored":
        run([*common, "--strategy", "mirrored", "--cpu-devices", "2",
             "--batch-size", batch_size // 2])
    else:
        procs = start_localhost_workers(
            [sys.executable, *map(str, common), "--strategy", "multiworker",
             "--batch-size", str(batch_size // 2)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                sys.exit(f"a worker failed:\n{err[-1500:]}")
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="S (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="global batch, even (default: %(default)s)")
    args = p.parse_args()
    machine = hardware.machine_summary()
    print(f"machine: {hardware.machine_line(machine)}")
    with tempfile.TemporaryDirectory(prefix="bench_distribute_") as tmp:
        work = Path(tmp) / "work"
        run(["gen_img_aug.py", "--data-dir", "data", "--work-dir", work, "--num-patches", "400",
             "--patch-size", "128"])
        run(["pre_processing.py", "--work-dir", work])
        rates = {}
        for way in ("one", "mirrored", "multiworker"):
            short = train_seconds(work, Path(tmp) / f"{way}_a", args.steps, way, args.batch_size)
            long = train_seconds(work, Path(tmp) / f"{way}_b", 3 * args.steps, way,
                                 args.batch_size)
            rates[way] = 2 * args.steps / (long - short)
            print(f"{way:>12}: {1 / rates[way]:.2f} s per step of {args.batch_size} patches "
                  f"({rates[way]:.2f} steps/s)")
    print("\nsteps/s as a ratio to one process: " + ", ".join(
        f"{way} {rates[way] / rates['one']:.2f}" for way in ("mirrored", "multiworker")))
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "machine": machine, "global_batch": args.batch_size, "patch": 128,
              "steps_per_s": {k: round(v, 4) for k, v in rates.items()},
              "ratio_to_one": {k: round(v / rates["one"], 3) for k, v in rates.items()}}
    out = ROOT / "bench" / "results" / "distribute.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
