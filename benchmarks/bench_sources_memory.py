"""Peak memory of `vitdepth analyze` per data source at two dataset sizes: sources must stream (issue 11).

Writes the same procedurally generated images as an ImageFolder tree, webdataset tar shards, a CSV table and a
Hugging Face `datasets` directory (save_to_disk), then runs `vitdepth analyze` in a child process on N_SMALL and
N_LARGE images of each, with the shipped demo ViT-S (32 px, so the model is not what is measured), and reports the
child's peak RSS (os.wait4) and the growth from the small to the large run. Flat in N means the source holds only
paths / offsets / labels, never decoded images. Linux only.

Usage: .venv/bin/python benchmarks/bench_sources_memory.py [--small 256] [--large 2048] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = f"file:{ROOT / 'src' / 'vitdepth' / 'demo_models' / 'S'}"


def write_fixtures(work: Path, n: int) -> dict[str, str]:
    import datasets
    import webdataset as wds

    from vitdepth.data import create_source

    src = create_source(f"synthetic:n={n},classes=10,size=32", seed=0)
    tree = work / "tree"
    rows = []
    for i in range(n):
        name = src.class_names[src.labels[i]]
        (tree / name).mkdir(parents=True, exist_ok=True)
        rel = f"{name}/{i:06d}.png"
        src.load(i).save(tree / rel)
        rows.append((rel, name))
    with open(work / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((f"tree/{rel}", name) for rel, name in rows)
    shards = work / "shards"
    shards.mkdir(exist_ok=True)
    per = (n + 3) // 4
    for s in range(4):
        with wds.TarWriter(str(shards / f"part-{s:06d}.tar")) as sink:
            for i in range(s * per, min(n, (s + 1) * per)):
                sink.write({"__key__": f"s{i:07d}", "png": (tree / rows[i][0]).read_bytes(),
                            "cls": int(src.labels[i])})
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=src.class_names)})
    ds = datasets.Dataset.from_dict({"image": [str(tree / rel) for rel, _ in rows],
                                     "label": [int(v) for v in src.labels]}, features=feats)
    ds.save_to_disk(str(work / "hfds"))
    return {"folder": f"folder:{tree}", "csv": f"csv:{work / 'table.csv'}",
            "wds": f"wds:{shards}/part-{{000000..000003}}.tar", "hf-dataset": f"hf-dataset:{work / 'hfds'}"}


def peak_rss_mib(spec: str, samples: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "vitdepth", "analyze", MODEL, "--data", spec, "--samples", str(samples),
           "--metrics", "core", "--out", str(out), "--quiet", "--num-workers", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-500:]}")
    return usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=256)
    ap.add_argument("--large", type=int, default=2048)
    ap.add_argument("--work-dir", type=Path, default=None)
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="vitdepth-bench-sources-"))
    specs = write_fixtures(work, args.large)
    print(f"{'source':<11} {'peak RSS at ' + str(args.small):>18} {'at ' + str(args.large):>10} {'growth':>8}")
    for kind, spec in specs.items():
        small = peak_rss_mib(spec, args.small, work / f"run-{kind}-small")
        large = peak_rss_mib(spec, args.large, work / f"run-{kind}-large")
        print(f"{kind:<11} {small:>14.0f} MiB {large:>6.0f} MiB {large - small:>+6.0f} MiB ({large / small - 1:+.1%})")


if __name__ == "__main__":
    main()
