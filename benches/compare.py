#!/usr/bin/env python3
"""filterdb vs DuckDB / Polars / pyarrow on the same Parquet files, in one command.

    pip install numpy pyarrow duckdb polars
    CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo build --release -p filterdb-cli
    CARGO_TARGET_DIR=/var/tmp/filterdb-target-release python3 benches/compare.py --filters 10000000

Steps (all under --workdir, default $TMPDIR/filterdb-compare-<filters>):
  1. `filterdb gen` a synthetic zoo of about --filters 3x3 filters (f32 safetensors);
  2. `filterdb init` + `filterdb ingest --manifest` into an f16 store and an f32 store
     (wall time -> filters/s, peak RSS via /usr/bin/time -v when available);
  3. pyarrow writes the same f32 weights as float16 Parquet (w0..w8 FLOAT16), timed from
     f32 arrays in memory (conversion + encode + write): with the shared baseline's writer
     settings (zstd, 4 meta columns) and with filterdb's settings (5 id columns,
     uncompressed PLAIN weights, no weight statistics);
  4. the same full-table scan -- count(*) and the sum of each weight column w0..w8 as f64 --
     with `filterdb sql --format csv`, DuckDB `read_parquet(...)`, Polars `scan_parquet(...)`
     and pyarrow, over STORE/filters/*/*.parquet; checks that every sum agrees (relative
     1e-6) and prints filters/s and ratios.

The filterdb binary: $FILTERDB_BIN, else $CARGO_TARGET_DIR/release/filterdb, else
./target/release/filterdb. Sizes: --filters (approximate; the number of models is derived),
or explicit --models / --max-channels / --min-layers / --max-layers (as `filterdb gen`).
"""

import argparse
import csv
import glob
import io
import json
import os
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

# Average 3x3 filters per model of `filterdb gen` by max_channels (default 10..50 layers),
# measured on seed 20220607; used only to turn --filters into --models.
AVG_FILTERS_PER_MODEL = {512: 1.84e6, 256: 0.6e6, 128: 0.16e6, 64: 0.04e6}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def find_bin():
    b = os.environ.get("FILTERDB_BIN")
    if b:
        return b
    for d in [os.environ.get("CARGO_TARGET_DIR"), "target"]:
        if d and os.path.exists(os.path.join(d, "release", "filterdb")):
            return os.path.join(d, "release", "filterdb")
    sys.exit("filterdb binary not found: build it with `cargo build --release -p filterdb-cli` "
             "or set FILTERDB_BIN")


def run(cmd, timed=False):
    """Runs cmd; returns (stdout, wall seconds, peak RSS in MB or None)."""
    use_time = timed and os.path.exists("/usr/bin/time")
    full = (["/usr/bin/time", "-v"] if use_time else []) + cmd
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout}\n{p.stderr}")
    rss = None
    if use_time:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        rss = int(m.group(1)) / 1024 if m else None
    return p.stdout, wall, rss


def timeit(fn, reps):
    """One warm-up run, then `reps` timed runs; returns (median seconds, result)."""
    res = fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), res


W = [f"w{j}" for j in range(9)]


def sql_sum9():
    return "SELECT count(*) AS n, " + ", ".join(
        f"sum(CAST({w} AS DOUBLE)) AS s{j}" for j, w in enumerate(W))


# ---------------------------------------------------------------- scans (each returns [n, s0..s8])

def scan_filterdb(bin_, store, threads):
    q = sql_sum9() + " FROM filter_columns"
    cmd = [bin_, "sql", "--store", store, "--format", "csv"]
    if threads:
        cmd += ["--threads", str(threads)]

    def f():
        out, _, _ = run(cmd + [q])
        rows = list(csv.reader(io.StringIO(out)))
        vals = rows[-1]
        return [int(vals[0])] + [float(v) for v in vals[1:]]
    return f


def scan_duckdb(files_glob, threads):
    import duckdb
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    q = sql_sum9() + f" FROM read_parquet('{files_glob}')"

    def f():
        r = con.execute(q).fetchone()
        return [int(r[0])] + [float(v) for v in r[1:]]
    return f


def scan_polars(files_glob):
    import polars as pl

    def f():
        df = pl.scan_parquet(files_glob).select(
            [pl.len().alias("n")] + [pl.col(w).cast(pl.Float64).sum().alias(w) for w in W]
        ).collect()
        r = df.row(0)
        return [int(r[0])] + [float(v) for v in r[1:]]
    return f


def scan_pyarrow(files):
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def col_sum(chunked):
        try:
            return pc.sum(pc.cast(chunked, pa.float64())).as_py()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            return float(sum(np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.float64).sum()
                             for c in chunked.chunks))

    def f():
        n = 0
        sums = [0.0] * 9
        for path in files:
            t = pq.read_table(path, columns=W, use_threads=True)
            n += t.num_rows
            for j, w in enumerate(W):
                sums[j] += col_sum(t.column(w)) or 0.0
        return [n] + sums
    return f


# ---------------------------------------------------------------- pyarrow float16 write baseline

def read_safetensors_f32(path):
    """The 3x3 conv weights of a `filterdb gen` file as one (n, 9) float32 array."""
    import numpy as np
    with open(path, "rb") as fh:
        (hlen,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(hlen))
        data = fh.read()
    parts = []
    for name, info in sorted(header.items()):
        if name == "__metadata__" or len(info["shape"]) != 4 or info["shape"][2:] != [3, 3]:
            continue
        s, e = info["data_offsets"]
        parts.append(np.frombuffer(data[s:e], dtype="<f4").reshape(-1, 9))
    return np.concatenate(parts)


def pyarrow_write_f16(models, out_dir, settings):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    if settings == "baseline":
        # shared/bench/gen_synthetic.py layout (b)
        meta = [pa.field("filter_id", pa.int64(), False), pa.field("model_id", pa.int32(), False),
                pa.field("layer_id", pa.int32(), False), pa.field("conv_depth", pa.int16(), False)]
        kw = dict(compression="zstd", use_dictionary=["model_id", "layer_id", "conv_depth"],
                  column_encoding={"filter_id": "DELTA_BINARY_PACKED"}, write_statistics=True)
    else:
        # filterdb's filters files: 5 id columns, uncompressed PLAIN weights, no weight stats
        meta = [pa.field("filter_id", pa.int64(), False), pa.field("model_id", pa.int64(), False),
                pa.field("layer_idx", pa.int32(), False), pa.field("out_channel", pa.int32(), False),
                pa.field("in_channel", pa.int32(), False)]
        kw = dict(compression={**{m.name: "zstd" for m in meta}, **{w: "none" for w in W}},
                  use_dictionary=False, write_statistics=[m.name for m in meta],
                  column_encoding={"filter_id": "DELTA_BINARY_PACKED", "layer_idx": "DELTA_BINARY_PACKED",
                                   "out_channel": "DELTA_BINARY_PACKED", "in_channel": "DELTA_BINARY_PACKED",
                                   **{w: "PLAIN" for w in W}})
    schema = pa.schema(meta + [pa.field(w, pa.float16(), False) for w in W])
    os.makedirs(out_dir, exist_ok=True)
    first = 0
    total_bytes = 0
    for mi, wts in enumerate(models):
        n = wts.shape[0]
        w16 = wts.astype(np.float16)
        ids = [pa.array(np.arange(first, first + n, dtype=np.int64))]
        for f in meta[1:]:
            ids.append(pa.array(np.zeros(n, dtype=f.type.to_pandas_dtype())))
        cols = [pa.array(np.ascontiguousarray(w16[:, j])) for j in range(9)]
        tbl = pa.Table.from_arrays(ids + cols, schema=schema)
        path = os.path.join(out_dir, f"model-{mi}.parquet")
        pq.write_table(tbl, path, row_group_size=262144, **kw)
        total_bytes += os.path.getsize(path)
        first += n
    return total_bytes


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--filters", type=float, default=10e6, help="approximate number of filters (default 10M)")
    ap.add_argument("--models", type=int, help="number of models (overrides --filters)")
    ap.add_argument("--max-channels", type=int, default=512)
    ap.add_argument("--min-layers", type=int, default=10)
    ap.add_argument("--max-layers", type=int, default=50)
    ap.add_argument("--seed", type=int, default=20220607)
    ap.add_argument("--workdir", help="default $TMPDIR/filterdb-compare-<filters>")
    ap.add_argument("--reps", type=int, default=3, help="timed scan repetitions (median; +1 warm-up)")
    ap.add_argument("--threads", type=int, default=0, help="threads for filterdb/DuckDB (0: all cores)")
    ap.add_argument("--no-f32", action="store_true", help="skip the f32 store ingest")
    ap.add_argument("--regen", action="store_true", help="regenerate the zoo and stores")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    bin_ = find_bin()
    models = args.models or max(1, round(args.filters / AVG_FILTERS_PER_MODEL.get(args.max_channels, 1.84e6)))
    work = args.workdir or os.path.join(tempfile.gettempdir(), f"filterdb-compare-{int(args.filters)}")
    zoo, s16, s32 = (os.path.join(work, d) for d in ("zoo", "store-f16", "store-f32"))
    if args.regen and os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    res = {"bin": bin_, "nproc": os.cpu_count(), "models": models}

    # 1. zoo
    if not os.path.exists(os.path.join(zoo, "manifest.csv")):
        out, wall, _ = run([bin_, "gen", zoo, "--models", str(models), "--seed", str(args.seed),
                            "--min-layers", str(args.min_layers), "--max-layers", str(args.max_layers),
                            "--max-channels", str(args.max_channels)])
        log(out.strip())
    files_st = sorted(glob.glob(os.path.join(zoo, "*.safetensors")))
    src_bytes = sum(os.path.getsize(f) for f in files_st)

    # 2. ingest
    def ingest(store, precision):
        if os.path.exists(store):
            shutil.rmtree(store)
        run([bin_, "init", store, "--precision", precision])
        out, wall, rss = run([bin_, "ingest", "--store", store, "--manifest",
                              os.path.join(zoo, "manifest.csv")], timed=True)
        m = re.search(r"; (\d+) filters in ([\d.]+) s", out)
        n = int(m.group(1))
        fbytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(store, "filters", "*", "*.parquet")))
        log(f"ingest {precision}: {n} filters, wall {wall:.2f} s ({n / wall / 1e6:.2f} M/s), "
            f"in-process {float(m.group(2)):.2f} s, peak RSS {rss} MB, {fbytes / n:.2f} B/filter")
        return {"filters": n, "wall_s": wall, "inproc_s": float(m.group(2)), "rss_mb": rss,
                "filters_per_s": n / wall, "bytes_per_filter": fbytes / n}

    res["ingest_f16"] = ingest(s16, "f16")
    n = res["ingest_f16"]["filters"]
    res["filters"] = n
    res["source_bytes_per_filter"] = src_bytes / n
    if not args.no_f32:
        res["ingest_f32"] = ingest(s32, "f32")

    # 3. pyarrow float16 write
    t0 = time.perf_counter()
    arrays = [read_safetensors_f32(f) for f in files_st]
    log(f"read {len(arrays)} safetensors into numpy in {time.perf_counter() - t0:.2f} s (not timed below)")
    res["pyarrow_write"] = {}
    for settings in ("baseline", "filterdb"):
        out_dir = os.path.join(work, f"pyarrow-f16-{settings}")
        shutil.rmtree(out_dir, ignore_errors=True)
        t0 = time.perf_counter()
        b = pyarrow_write_f16(arrays, out_dir, settings)
        wall = time.perf_counter() - t0
        res["pyarrow_write"][settings] = {"s": wall, "filters_per_s": n / wall, "bytes_per_filter": b / n}
        log(f"pyarrow f16 write ({settings} settings): {wall:.2f} s, {n / wall / 1e6:.2f} M filters/s, "
            f"{b / n:.2f} B/filter")
        shutil.rmtree(out_dir, ignore_errors=True)
    del arrays

    # 4. scans of the f16 store (and f32 store with filterdb / DuckDB)
    res["scan"] = {}
    for label, store in [("f16", s16)] + ([] if args.no_f32 else [("f32", s32)]):
        fglob = os.path.join(store, "filters", "*", "*.parquet")
        files = sorted(glob.glob(fglob))
        tools = [("filterdb", scan_filterdb(bin_, store, args.threads)),
                 ("duckdb", scan_duckdb(fglob, args.threads)),
                 ("polars", scan_polars(fglob)),
                 ("pyarrow", scan_pyarrow(files))]
        out = {}
        for name, fn in tools:
            try:
                secs, r = timeit(fn, args.reps)
            except Exception as e:  # a tool that cannot read the files is reported, not fatal
                log(f"scan {label} {name}: FAILED: {e}")
                continue
            out[name] = {"s": secs, "filters_per_s": r[0] / secs, "result": r}
            log(f"scan {label} {name}: {secs:.3f} s, {r[0] / secs / 1e6:.1f} M filters/s")
        ref = out["filterdb"]["result"]
        for name, o in out.items():
            r = o["result"]
            ok = r[0] == ref[0] and all(abs(a - b) <= 1e-6 * max(abs(a), abs(b), 1e-9) for a, b in zip(r[1:], ref[1:]))
            o["max_rel_diff"] = max(abs(a - b) / max(abs(a), abs(b), 1e-300) for a, b in zip(r[1:], ref[1:]))
            o["agrees"] = ok
        res["scan"][label] = out

    # report
    print(f"\nfilterdb {bin_}; {n:,} filters in {models} models; {os.cpu_count()} cores\n")
    print(f"{'ingest / write':<52} {'s':>8} {'M filters/s':>12} {'B/filter':>9} {'peak RSS MB':>12}")
    for k in ("ingest_f16", "ingest_f32"):
        if k in res:
            x = res[k]
            print(f"{'filterdb ingest f32 safetensors -> ' + k[-3:] + ' store':<52} {x['wall_s']:>8.2f} "
                  f"{x['filters_per_s'] / 1e6:>12.2f} {x['bytes_per_filter']:>9.2f} {x['rss_mb'] or 0:>12.0f}")
    for k, x in res["pyarrow_write"].items():
        print(f"{'pyarrow f32 numpy -> float16 Parquet (' + k + ')':<52} {x['s']:>8.2f} "
              f"{x['filters_per_s'] / 1e6:>12.2f} {x['bytes_per_filter']:>9.2f} {'':>12}")
    print(f"(source: {res['source_bytes_per_filter']:.2f} B/filter of f32 safetensors)")
    for label, out in res["scan"].items():
        print(f"\nfull scan of the {label} store: count(*) + sum(w0..w8 as f64); median of {args.reps}")
        print(f"{'tool':<10} {'s':>8} {'M filters/s':>12} {'time / filterdb':>18} {'max rel diff':>13} agrees")
        base = out["filterdb"]["s"]
        for name, o in out.items():
            print(f"{name:<10} {o['s']:>8.3f} {o['filters_per_s'] / 1e6:>12.1f} {o['s'] / base:>17.2f}x "
                  f"{o['max_rel_diff']:>13.1e} {'yes' if o['agrees'] else 'NO'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    bad = [(l, t) for l, out in res["scan"].items() for t, o in out.items() if not o["agrees"]]
    if bad:
        sys.exit(f"sums disagree: {bad}")


if __name__ == "__main__":
    main()
