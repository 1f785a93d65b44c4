"""Write small CNN Filter DB releases (``dataset.h5``) for ``filterdb import-cnnfilterdb``.

Usage::

    python3 tests/reference/make_h5_fixtures.py OUTDIR            # the test fixtures
    python3 tests/reference/make_h5_fixtures.py OUTDIR --big 5000000 [--compression none]

The real release (Gavrikov & Keuper, CVPR 2022) is one HDF5 file: ``/filters`` (an N x 9
float32 array, row = filter id; some copies call it ``/filter``) and ``/meta``, a pandas
DataFrame written with PyTables, one row per (model, conv layer) with a MultiIndex on
``[model_id, conv_depth, conv_depth_norm]``, an inclusive ``"start:end"`` ``filter_ids``
range and the model's columns. This script writes copies of that shape, deterministically
(numpy seed), with h5py, pandas and PyTables (pinned in requirements.txt):

=====================  ==========================================================
``table.h5``           ``/filters`` gzip-4, chunks 4096 x 9 (smaller than the file);
                       ``/meta`` in pandas ``table`` format (a compound dataset)
``fixed.h5``           ``/filters`` contiguous; ``/meta`` in pandas' default ``fixed``
                       format (string columns pickled: only Python reads them)
``meta.parquet``,      the exports of ``fixed.h5``'s ``/meta`` that ``--meta`` reads:
``meta.csv``           ``pd.read_hdf("fixed.h5", "meta").to_parquet(...)`` / ``.to_csv(...)``
``filter_name.h5``     the array named ``/filter``
``datatype.h5``        an older copy: ``Datatype`` instead of ``Visual Category``
``csv_meta.h5``        ``/meta`` as the UTF-8 bytes of a CSV file (a uint8 array), as a
                       2021 version of the paper's notebook read it
``range_beyond.h5``    one model's last range ends past the end of ``/filters``
``no_filters.h5``      no ``/filters`` (nor ``/filter``) dataset
``width8.h5``          ``/filters`` is N x 8
``filters.f32``        the N x 9 values of every good file, raw little-endian float32
``expected.json``      what an import must produce (models, layers, labels)
=====================  ==========================================================

The filters are awkward on purpose: signed zeros, subnormals, an all-zero layer, values
up to +-1000 (exact in float16's range). ``--big N`` writes only ``big.h5`` (about N
filters in models of paper-like sizes, ``/meta`` as a table) for speed measurements.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

SEED = 20220607
N_FILTERS = 20_000
CHUNK_ROWS = 4096

# model_id, model, Name, Task, Visual Category, Pretraining-Dataset, Training-Dataset,
# Paper, layers: list of (conv_depth, n_filters); conv_depth_norm = depth / max depth.
MODELS = [
    (3, "resnet18_imagenet_11", "ResNet-18", "Classification", "natural", None, "ImageNet",
     "https://arxiv.org/abs/1512.03385", [(0, 27), (1, 4096), (2, 4096), (4, 1200), (5, 300)]),
    (7, "unet_lits_12", "U-Net", "Semantic Segmentation", "medical ct", "ImageNet", "LiTS",
     None, [(0, 90), (1, 1500), (1, 1500), (2, 1000), (3, 64)]),
    (11, "yolo_coco_11", "YOLOv3", "Object Detection", "natural", "ImageNet", "COCO",
     "https://arxiv.org/abs/1804.02767", [(0, 96), (2, 2048), (3, 512)]),
    (12, "dcgan_celeba_9", "DCGAN", "GAN Generator", "faces", None, "CelebA",
     None, [(0, 700), (1, 350)]),
    (20, "fractalnet_fractaldb_11", "FractalNet", "Classification", "fractals", None,
     "FractalDB-1k", "https://arxiv.org/abs/2101.08515", [(0, 1000)]),
    (21, "maskrcnn_coco_11", "Mask R-CNN", "Instance Segmentation", "natural", "ImageNet",
     "COCO", "https://arxiv.org/abs/1703.06870", [(0, 27), (1, 27), (3, 1000), (4, 295)]),
]
# The order in which the models' filters lie in /filters (not model_id order), and how
# many trailing rows belong to no model.
RANGE_ORDER = [11, 3, 21, 7, 20, 12]
OP_COLUMNS = ["Conv", "Relu", "Add", "BatchNormalization", "Upsample"]


def filter_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Awkward float32 weights: normal, signed zeros, subnormals, exact float16 values."""
    x = rng.normal(0.0, 0.1, size=(n, 9)).astype(np.float32)
    flat = x.reshape(-1)
    k = flat.size
    idx = rng.choice(k, size=k // 50, replace=False)
    flat[idx[: k // 200]] = -0.0
    sub = idx[k // 200 : k // 100]
    flat[sub] = (rng.integers(1, 1000, size=sub.size).astype(np.uint32)).view(np.float32)
    big = idx[k // 100 : k // 80]
    flat[big] = rng.uniform(-1000, 1000, size=big.size).astype(np.float32)
    return x


def layout(models, order, n_total):
    """Assign each layer its inclusive [start, end] range in ``order``; returns rows, used."""
    by_id = {m[0]: m for m in models}
    pos = 0
    ranges = {}
    for mid in order:
        for li, (_, n) in enumerate(by_id[mid][8]):
            ranges[(mid, li)] = (pos, pos + n - 1)
            pos += n
    assert pos <= n_total, (pos, n_total)
    return ranges, pos


def meta_frame(models, ranges, visual_column="Visual Category") -> pd.DataFrame:
    """One row per (model, layer), rows in a shuffled but fixed order, MultiIndex like the release."""
    rows = []
    for mi, (mid, model, name, task, vc, pre, train, paper, layers) in enumerate(models):
        max_depth = max(d for d, _ in layers)
        n3 = sum(n for _, n in layers)
        ones = 64 * (mi + 1)
        sevens = 3 if mi % 2 == 0 else None
        total = n3 + ones + (sevens or 0)
        for li, (depth, _) in enumerate(layers):
            start, end = ranges[(mid, li)]
            row = {
                "model_id": mid,
                "conv_depth": depth,
                "conv_depth_norm": depth / max_depth if max_depth else 0.0,
                "filter_ids": f"{start}:{end}",
                "model": model,
                "producer": "pytorch",
                "op_set": 11,
                "depth": 10 + 3 * mi,
                "Name": name,
                "Paper": paper,
                "Pretraining-Dataset": pre,
                "Training-Dataset": train,
                visual_column: vc,
                "Task": task,
                "Accessible": f"https://github.com/example/{model}",
                "Dataset URL": None if mi % 3 else f"https://data.example/{train}",
                "total_filters": total,
                "3x3_filter_share": n3 / total,
                "(1, 1) filters": ones,
                "(3, 3) filters": n3,
                "(7, 7) filters": sevens,
            }
            for oi, op in enumerate(OP_COLUMNS):
                # pandas' outer joins left NaN where a model has no such operator
                row[op] = None if (mi + oi) % 4 == 3 else len(layers) * (oi + 1)
            rows.append(row)
    rng = np.random.default_rng(SEED + 1)
    order = rng.permutation(len(rows))
    df = pd.DataFrame([rows[i] for i in order])
    return df.set_index(["model_id", "conv_depth", "conv_depth_norm"])


def write_filters(path: Path, values: np.ndarray, name="filters", compress=True, mode="w"):
    with h5py.File(path, mode) as f:
        if compress:
            f.create_dataset(name, data=values, chunks=(CHUNK_ROWS, values.shape[1]),
                             compression="gzip", compression_opts=4)
        else:
            f.create_dataset(name, data=values)


def write_table_meta(path: Path, df: pd.DataFrame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTables' NaturalNameWarning for "(1, 1) filters"
        df.to_hdf(path, key="meta", format="table", mode="a")


def expected(models, ranges, n_total) -> dict:
    out = []
    for mid, model, name, task, vc, pre, train, paper, layers in models:
        max_depth = max(d for d, _ in layers)
        out.append({
            "model_id": mid, "name": model, "architecture": name, "task": task,
            "visual_category": vc, "pretraining_dataset": pre, "training_dataset": train,
            "paper": paper,
            "layers": [
                {"start": ranges[(mid, li)][0], "end": ranges[(mid, li)][1],
                 "conv_depth": d, "conv_depth_norm": d / max_depth if max_depth else 0.0}
                for li, (d, _) in enumerate(layers)
            ],
        })
    return {"n_filters": n_total, "models": out}


def make_fixtures(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    values = filter_values(rng, N_FILTERS)
    ranges, used = layout(MODELS, RANGE_ORDER, N_FILTERS)
    # an all-zero layer (DCGAN's second)
    s, e = ranges[(12, 1)]
    values[s : e + 1] = 0.0
    values.astype("<f4").tofile(out / "filters.f32")
    df = meta_frame(MODELS, ranges)

    p = out / "table.h5"
    write_filters(p, values)
    write_table_meta(p, df)

    p = out / "fixed.h5"
    write_filters(p, values, compress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PerformanceWarning: pickling object columns
        df.to_hdf(p, key="meta", mode="a")
    # The two lines of pandas that make a --meta file (docs/import-cnnfilterdb.md):
    pd.read_hdf(p, "meta").to_parquet(out / "meta.parquet")
    pd.read_hdf(p, "meta").to_csv(out / "meta.csv")

    p = out / "filter_name.h5"
    write_filters(p, values, name="filter")
    write_table_meta(p, df)

    p = out / "datatype.h5"
    write_filters(p, values)
    write_table_meta(p, meta_frame(MODELS, ranges, visual_column="Datatype"))

    p = out / "csv_meta.h5"
    write_filters(p, values)
    csv_bytes = df.reset_index().to_csv(index=False).encode("utf-8")
    with h5py.File(p, "a") as f:
        f.create_dataset("meta", data=np.frombuffer(csv_bytes, dtype=np.uint8))

    # broken copies
    p = out / "range_beyond.h5"
    write_filters(p, values)
    bad = df.reset_index()
    mask = (bad["model_id"] == 12) & (bad["filter_ids"] == "{}:{}".format(*ranges[(12, 1)]))
    bad.loc[mask, "filter_ids"] = f"{ranges[(12, 1)][0]}:{N_FILTERS + 4}"
    write_table_meta(p, bad.set_index(["model_id", "conv_depth", "conv_depth_norm"]))

    p = out / "no_filters.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("weights", data=values[:10])
    write_table_meta(p, df)

    p = out / "width8.h5"
    write_filters(p, np.ascontiguousarray(values[:, :8]))
    write_table_meta(p, df)

    (out / "expected.json").write_text(
        json.dumps(expected(MODELS, ranges, N_FILTERS), indent=1, sort_keys=True) + "\n")
    print(f"wrote {N_FILTERS} filters ({used} in {len(MODELS)} models) to {out}")


def make_big(out: Path, n: int, compress: bool):
    """About ``n`` filters in models of 10..40 layers, written in slices (bounded memory)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED + 2)
    models = []
    left = n
    mid = 0
    tasks = ["Classification", "Segmentation", "Object Detection", "GAN Generator"]
    cats = ["natural", "medical ct", "faces", "fractals"]
    while left > 0:
        n_layers = int(rng.integers(10, 41))
        sizes = rng.integers(27, 2 * max(27, min(left, 250_000)) // n_layers + 28, size=n_layers)
        layers = []
        for d, k in enumerate(sizes):
            k = int(min(k, left))
            if k <= 0:
                break
            layers.append((d, k))
            left -= k
        models.append((mid, f"model_{mid:04d}", f"Net-{mid % 7}", tasks[mid % 4], cats[mid % 4],
                       None, "ImageNet", None, layers))
        mid += 1
    total = n - left
    ranges, used = layout(models, [m[0] for m in models], total)
    p = out / "big.h5"
    with h5py.File(p, "w") as f:
        kw = dict(chunks=(CHUNK_ROWS, 9), compression="gzip", compression_opts=4) if compress else {}
        ds = f.create_dataset("filters", shape=(total, 9), dtype="<f4", **kw)
        step = 1_000_000
        for s in range(0, total, step):
            e = min(total, s + step)
            ds[s:e] = rng.normal(0.0, 0.1, size=(e - s, 9)).astype(np.float32)
    write_table_meta(p, meta_frame(models, ranges))
    print(f"wrote {total} filters in {len(models)} models to {p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--big", type=int, default=0, help="write only big.h5 with about N filters")
    ap.add_argument("--compression", choices=["gzip", "none"], default="gzip")
    a = ap.parse_args()
    if a.big:
        make_big(a.out, a.big, a.compression == "gzip")
    else:
        make_fixtures(a.out)


if __name__ == "__main__":
    main()
