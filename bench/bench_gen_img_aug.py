"""Speed-up of gen_img_aug.py with 2 workers over 1, and its peak memory at two patch counts.

Runs the real script as a subprocess on the sample data (or --data-dir) and samples the
resident memory of its whole process tree. All numbers come from this one run, so they
compare like with like on a noisy machine. Targets: speed-up >= 1.8x on 2 cores, and peak
memory that does not grow with the patch count.

    python bench/bench_gen_img_aug.py [--data-dir data] [--counts 15000 75000] [--tmp-dir DIR]

Patches go to a RAM-backed folder (/dev/shm) when there is one: on a small VM, writing
gigabytes of PNGs to disk measures the disk's bandwidth, not the work the workers share.

It also times one patch (the script's fixed start-up: imports, checking the images, the
samples figure) so the speed-up of the patch writing alone can be read beside the whole
script's; the paper's 75,000 patches make the fixed part negligible.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_rss_bytes(pid):
    """Resident memory of a process and all its descendants (Linux /proc)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run(data_dir, count, workers, tmp_dir):
    with tempfile.TemporaryDirectory(dir=tmp_dir) as work:
        cmd = [sys.executable, str(ROOT / "gen_img_aug.py"), "--data-dir", str(data_dir),
               "--work-dir", work, "--num-patches", str(count), "--workers", str(workers)]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        peak = [0]

        def sample():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        _, err = proc.communicate()
        sampler.join()
        seconds = time.perf_counter() - start
        if proc.returncode:
            sys.exit(f"gen_img_aug.py failed:\n{err.decode()}")
    return seconds, peak[0] / 2 ** 20


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--counts", type=int, nargs=2, default=[15000, 75000])
    p.add_argument("--tmp-dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                   help="where the patches are written (default: /dev/shm if present)")
    args = p.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("this benchmark reads /proc (Linux)")
    print(f"gen_img_aug.py on {args.data_dir}, {os.cpu_count()} CPUs, patches written to "
          f"{args.tmp_dir or tempfile.gettempdir()}")
    print(f"{'patches':>8} {'workers':>7} {'seconds':>8} {'patch/s':>8} {'peak MiB':>9}")
    results = {}
    for count in args.counts:
        for workers in (1, 2):
            seconds, mib = run(args.data_dir, count, workers, args.tmp_dir)
            results[count, workers] = (seconds, mib)
            print(f"{count:>8} {workers:>7} {seconds:>8.1f} {count / seconds:>8.0f} {mib:>9.0f}")
    fixed, _ = run(args.data_dir, 1, 1, args.tmp_dir)
    print(f"fixed start-up (1 patch): {fixed:.1f} s")
    small, large = args.counts
    for count in args.counts:
        one, two = results[count, 1][0], results[count, 2][0]
        print(f"speed-up 2 vs 1 worker at {count} patches: {one / two:.2f}x whole script, "
              f"{(one - fixed) / (two - fixed):.2f}x patch writing")
    for workers in (1, 2):
        print(f"peak memory {workers} worker(s): {results[large, workers][1] / results[small, workers][1]:.2f}x "
              f"at {large} vs {small} patches ({large // small}x the patches)")


if __name__ == "__main__":
    main()
