"""Running a function over tasks in worker processes with a progress bar."""
import os


def default_workers():
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parallel_map(func, tasks, workers, desc, total=None, unit="it"):
    """Yield func(task) for each task in order, over `workers` processes, with a progress bar.

    `total` counts progress units; each result must then be a (units_done, value) pair.
    """
    import multiprocessing
    from tqdm import tqdm

    tasks = list(tasks)
    bar = tqdm(total=total if total is not None else len(tasks), desc=desc, unit=unit,
               dynamic_ncols=True, disable=None)
    with bar:
        if workers <= 1:
            results = map(func, tasks)
            yield from _advance(results, bar, total)
            return
        # spawn, not fork: a parent that has TensorFlow (or any threads) loaded could deadlock a
        # forked child, and spawn behaves the same on Linux, macOS and Windows.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from _advance(pool.imap(func, tasks), bar, total)


def _advance(results, bar, total):
    for result in results:
        if total is None:
            bar.update(1)
            yield result
        else:
            done, value = result
            bar.update(done)
            yield value
