"""Prediction spread over many processes or machines: a fixed share of the images for each
shard (--shard I/N), and the shards' folders merged into the files one run writes (--merge)."""
import argparse
import csv
import re
import shutil
from pathlib import Path

from cli import PipelineError, existing_folder, read_json
from outputs import same_or_inside

# Keys a shard adds to the record of its run; the merged record is the single run's.
SHARD_KEYS = ("shard", "all_images", "chart_copy", "named_after_input")
SHARD_SUFFIX = re.compile(r"_shard\d+of\d+")


def shard_option(text):
    """argparse type of --shard I/N: (I, N) with 1 <= I <= N."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N, e.g. 2/8") from None
    if i == 0 and n > 0:        # an array job's task id, which counts from 0
        raise argparse.ArgumentTypeError(f"{text}: I counts from 1 (SLURM array task ids count "
                                         "from 0: give $((SLURM_ARRAY_TASK_ID + 1))/N)")
    if not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"{text}: I must be from 1 to N")
    return i, n


def shard_names(names, shard):
    """Shard I of N takes every N-th image from the I-th, in the order of the whole list, so
    shards of a folder of similar frames get similar work."""
    i, n = shard
    return list(names)[i - 1::n]


def shard_folder(out, shard):
    return out.parent / f"{out.name}_shard{shard[0]}of{shard[1]}"


def read_shards(folders, marker):
    """(records, the whole image list) of shard folders that together make one run: every
    shard of the same N once, the same settings, each image in exactly one shard."""
    records = []
    for folder in folders:
        path = Path(folder) / marker
        if not path.is_file():
            raise PipelineError(f"{folder} is not a shard's output folder: {marker} is missing")
        record = read_json(path, "shard record")
        if not isinstance(record, dict) or "shard" not in record:
            raise PipelineError(f"{path} is not a shard's record (run with --shard I/N)")
        if not well_formed(record):
            raise PipelineError(f"{path} is not a shard's record as this pipeline writes it "
                                "(changed by hand?); run that shard again")
        records.append(record)
    counts = {tuple(r["shard"])[1] for r in records}
    found = sorted(tuple(r["shard"])[0] for r in records)
    if len(counts) != 1 or found != list(range(1, counts.pop() + 1)):
        raise PipelineError(f"the folders hold shards {found} of "
                            f"{sorted({tuple(r['shard'])[1] for r in records})}; merge every "
                            "shard I/N of one run, each once")
    first = run_settings(records[0])
    for folder, record in zip(folders, records):
        same = run_settings(record)
        if same != first:
            differs = sorted(k for k in set(same) | set(first) if same.get(k) != first.get(k))
            raise PipelineError(f"{folder} was run with other settings than {folders[0]} "
                                f"({', '.join(differs)}); merge the shards of one run")
    everything = records[0]["all_images"]
    covered = [name for r in records for name in r["images"]]
    if sorted(covered) != sorted(everything):
        raise PipelineError("the shards do not cover the run's images exactly once")
    return records, everything


def well_formed(record):
    """Whether a shard's record holds its shard I/N and lists of image names."""
    shard, lists = record["shard"], (record.get("images"), record.get("all_images"))
    return (isinstance(shard, list) and len(shard) == 2
            and all(type(k) is int for k in shard) and 1 <= shard[0] <= shard[1]
            and all(isinstance(names, list) and all(isinstance(n, str) for n in names)
                    for names in lists))


def run_settings(record):
    """What the shards of one run share: the record without its own images and what it did
    to each (the faint-object filter's threshold is shared, its counts are per image)."""
    same = {k: v for k, v in record.items()
            if k not in ("shard", "images", "streamed", "image_sha256")}
    if isinstance(same.get("faint_filter"), dict):
        same["faint_filter"] = {k: v for k, v in same["faint_filter"].items()
                                if k not in ("objects_dropped", "not_applied_to")}
    return same


def open_shards(dirs, output, marker):
    """(shard folders, their records, the whole image list, the merged folder) of --merge
    DIR... [--output]."""
    folders = [existing_folder(d, "--merge") for d in dirs]
    records, everything = read_shards(folders, marker)
    out = Path(output) if output else merged_folder(folders)
    if out is None:
        raise PipelineError("the shard folders' names do not say where the merged folder goes; "
                            "give --output")
    for folder in folders:
        if same_or_inside(out, folder) or same_or_inside(folder, out):
            raise PipelineError(f"--output {out} is, holds or lies inside the shard folder "
                                f"{folder}, which the merge reads; give another --output")
    return folders, records, everything, out


def copy_shard_files(folders, staging, skip):
    """Every file and subfolder of the shard folders but `skip` into the staging folder."""
    for folder in map(Path, folders):
        for entry in folder.iterdir():
            if entry.name in skip:
                continue
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, dirs_exist_ok=True)
            else:
                shutil.copy2(entry, staging / entry.name)


def check_shard_holds(folder, files_of_frames, redo):
    """Refuse a shard folder that lacks a file its run wrote (deleted or moved since): the
    merged folder would list a frame without it. files_of_frames: (frame, its files);
    redo: how to make the shard again."""
    for name, files in files_of_frames:
        missing = next((file for file in files if not (Path(folder) / file).is_file()), None)
        if missing:
            raise PipelineError(f"{folder} lacks {missing}, which its run wrote for frame "
                                f"{name}: put it back, or {redo}")


def merged_record(records, everything):
    """The record a single run over all images writes."""
    merged = {k: v for k, v in records[0].items() if k not in SHARD_KEYS}
    if "streamed" in merged:
        merged["streamed"] = sorted(n for r in records for n in r["streamed"])
    if merged.get("faint_filter"):
        dropped = {n: k for r in records for n, k in r["faint_filter"]["objects_dropped"].items()}
        merged["faint_filter"] = {
            **merged["faint_filter"],
            "objects_dropped": {n: dropped[n] for n in everything if n in dropped},
            "not_applied_to": sorted(n for r in records
                                     for n in r["faint_filter"]["not_applied_to"])}
    merged["images"] = everything
    if "image_sha256" in merged:
        digests = {n: d for r in records for n, d in r["image_sha256"].items()}
        merged["image_sha256"] = {n: digests[n] for n in everything}
    return merged


def merge_object_tables(tables, order, path):
    """objects.csv of several shards as one, images in the whole run's order; a shard without
    micrometre columns leaves them empty, as a single run does for such images."""
    rows, columns = {}, []
    for table in tables:
        with open(table, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if len(reader.fieldnames or []) > len(columns):
                columns = reader.fieldnames
            for row in reader:
                rows.setdefault(row["image"], []).append(row)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        for name in order:
            writer.writerows(rows.get(name, []))
    return sum(len(r) for r in rows.values())


def merged_folder(folders):
    """Where the merged folder goes by default: the shards' common name without _shardIofN,
    beside them; None where they do not share one."""
    names = {(Path(f).resolve().parent, SHARD_SUFFIX.sub("", Path(f).name)) for f in folders}
    if len(names) != 1:
        return None
    parent, name = names.pop()
    return None if not name or name == Path(folders[0]).name else parent / name
