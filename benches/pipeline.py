#!/usr/bin/env python3
"""The paper pipeline through `filterdb analyze` vs the shared baseline (../shared/bench/).

One command:

    python3 benches/pipeline.py --n 10000000            # ~2 min after the release build

What it does, in order (each step is skipped when its output already exists):

1. data: `gen_synthetic.py --n N --out DATA --layouts b` (the baseline's float16 w0..w8
   Parquet, seed 20220607), DATA = WORK/n<N>/data.
2. adapter: the SAME float16 values into a filterdb store. Per model of `models.parquet`,
   one `.safetensors` whose tensors are that model's layers (`layers.parquet`: out/in
   channels, filter count, order by layer_id) as float16 `[out, in, 3, 3]` OIHW arrays in
   the baseline's filter order (row r of a layer = out r // in, in r % in; w0..w8 =
   row-major kh, kw), named `conv000.weight`, `conv001.weight`, ... (natural sort = layer
   order); a TOML card per model with `conv_levels` (the model's planned layer count) and
   each layer's `conv_depth` (the baseline's); `manifest.csv` with path, card, name
   (the baseline's model_name), task, visual_category (mapped onto schemas/vocab
   spellings), architecture. The generator truncates the very last layer of the data
   set at N filters; that tensor is written as `[n / c, c, 3, 3]` with c the largest
   divisor of n up to in_ch (same values, same order; only orthogonality, which the
   baseline does not compute, sees the shape; `[n, 1, 3, 3]`, as in sessions 1-3,
   made the 10M set's last layer an 87,840-channel Gram matrix worth 65 % of all
   orthogonality work). Then `filterdb init --precision f16` and
   `filterdb ingest --manifest`.
3. filterdb: `filterdb analyze kl-matrix --by task --format json` (2 passes over the
   filters: PCA basis with the largest filters, then histograms with the exact range
   that confirms the range guessed from those filters; 3 when the guess is off) and
   `filterdb analyze degeneration --all-layers --format csv` (1 pass), each one warm-up
   run then --reps timed runs under /usr/bin/time -v (wall, user, sys, peak RSS);
   the median wall is reported. Degeneration also runs with `--gram-precision f32`
   (orthogonality's opt-in f32 Gram kernel), reported beside the default, not in its place.
4. baseline: `bench_polars.py`, `bench_duckdb.py`, `bench_numpy.py --layout b`
   (POLARS_MAX_THREADS=2), --peer-reps runs each under /usr/bin/time -v after reading
   the Parquet file once into the page cache; their own stage times come from their
   JSON. With --reuse-baseline, existing JSONs in RESULTS are read instead of rerun.
5. agreement: KL matrix between tasks (filterdb JSON vs each peer's `kl`, labels mapped
   back), per-layer n, sparsity and variance entropy (filterdb CSV vs the peers'
   `layers`), with the tolerances in TOL below.
6. ratio table: filters/s of filterdb (kl-matrix + degeneration wall, two processes)
   vs each peer's whole pipeline (sum of its stage times, in-process, as the baseline
   reports it; also its process wall), and per part.

Results: WORK/n<N>/results/{pipeline.json, filterdb_kl.json, filterdb_degeneration.csv,
<tool>_b.json, runs.jsonl}.  The binary: $FILTERDB_BIN, default
/var/tmp/filterdb-target-release/release/filterdb.  --perf SECONDS additionally records
`perf record -g` of each filterdb command (repeated for SECONDS) and prints the top
symbols (perf report --no-children).
"""
import argparse
import csv
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

BENCH = os.environ.get("FILTERDB_BASELINE", "/work/shared/bench")
DEFAULT_BIN = "/var/tmp/filterdb-target-release/release/filterdb"

# Baseline vocabularies -> filterdb's schemas/vocab spellings.
TASK_MAP = {
    "classification": "Classification",
    "segmentation": "Segmentation",
    "detection": "Object Detection",
    "gan_discriminator": "GAN Discriminator",
    "autoencoder": "Auto-Encoder",
    "self_supervised": "Self-Supervised",
}
VISCAT_MAP = {
    "natural": "Natural",
    "medical_ct": "Medical CT",
    "medical_xray": "Medical X-Ray",
    "faces": "Faces",
    "satellite": "Satellite",
    "handwriting": "Handwriting",
    "artwork": "Art",
    "textures": "Textures",
    "plants": "Plants",
    "fractals": "Fractals",
}

# Tolerances of the agreement check.
#  - KL: both sides histogram the same float16 values projected on a float64 PCA basis
#    fitted from float64 moments; only summation order differs, so bins can differ only
#    for coefficients within ~1e-12 of a bin edge. Relative, per off-diagonal entry.
#  - sparsity / entropy: filterdb's degeneration CSV rounds to 4 decimals (abs error
#    <= 5e-5); the peers compute from float64 moments (DuckDB, Polars) or a float32 SVD
#    (numpy), which adds ~1e-6.
#  - numpy's scikit-learn PCA runs on float32 input (bench_numpy.py casts to float32),
#    so its basis, and through it the KL, carries float32 rounding: ~2e-5 relative.
TOL = dict(kl_rel=1e-5, kl_rel_numpy=1e-4, sparsity_abs=5.1e-5, entropy_abs=1e-4)


def log(msg):
    print(msg, flush=True)


def timed(cmd, env=None, stdout_path=None):
    """Run cmd under /usr/bin/time -v; return dict(wall, user, sys, rss_mib, stdout, stderr)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    err = p.stderr
    if p.returncode != 0:
        sys.stderr.write(p.stdout[-4000:] + err[-4000:])
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}")

    def grab(key):
        m = re.search(re.escape(key) + r":\s*([0-9.]+)", err)
        return float(m.group(1)) if m else float("nan")

    own = err[: err.find("\tCommand being timed")] if "\tCommand being timed" in err else err
    if stdout_path:
        with open(stdout_path, "w") as f:
            f.write(p.stdout)
    return dict(wall=wall, user=grab("User time (seconds)"), sys=grab("System time (seconds)"),
                rss_mib=grab("Maximum resident set size (kbytes)") / 1024.0,
                load1=os.getloadavg()[0], stdout=p.stdout, stderr=own.strip())


def warm(path):
    subprocess.run(["cat", path], stdout=subprocess.DEVNULL, check=True)


def warm_dir(d):
    for root, _, files in os.walk(d):
        for f in files:
            if f.endswith(".parquet"):
                warm(os.path.join(root, f))


# --------------------------------------------------------------------------- data
def gen_data(n, data):
    if os.path.exists(os.path.join(data, "gen_stats.json")) and \
            os.path.exists(os.path.join(data, "filters_f16.parquet")):
        log(f"data: reusing {data}")
        return
    log(f"data: gen_synthetic.py --n {n} --out {data} --layouts b")
    subprocess.run([sys.executable, os.path.join(BENCH, "gen_synthetic.py"), "--n", str(n),
                    "--out", data, "--layouts", "b"], check=True, stdout=subprocess.DEVNULL)


def build_zoo(data, zoo):
    """Adapter: baseline Parquet -> per-model float16 safetensors + cards + manifest."""
    import pyarrow.parquet as pq
    from safetensors.numpy import save_file

    done = os.path.join(zoo, "manifest.csv")
    if os.path.exists(done):
        log(f"zoo: reusing {zoo}")
        return
    t0 = time.perf_counter()
    os.makedirs(zoo, exist_ok=True)
    models = pq.read_table(os.path.join(data, "models.parquet")).to_pylist()
    layers = pq.read_table(os.path.join(data, "layers.parquet")).to_pylist()
    layers.sort(key=lambda L: L["layer_id"])
    by_model = {}
    for L in layers:
        by_model.setdefault(L["model_id"], []).append(L)
    pf = pq.ParquetFile(os.path.join(data, "filters_f16.parquet"))
    wcols = [f"w{i}" for i in range(9)]
    # Filters are written in layer_id order, models in model_id order (gen_synthetic.py):
    # stream row groups and cut them into layers by filter count.
    rg_iter = pf.iter_batches(batch_size=1 << 20, columns=["model_id", "layer_id"] + wcols)
    pending = []          # list of (model_id, layer_id, W[n, 9] f16) pieces
    buf = None
    buf_meta = None
    pos = 0

    def take(k):
        nonlocal buf, buf_meta, pos
        out, mids, lids = [], [], []
        need = k
        while need:
            if buf is None or pos == len(buf):
                b = next(rg_iter)
                buf = np.stack([b.column(c).to_numpy(zero_copy_only=False) for c in wcols], axis=1)
                buf_meta = (b.column("model_id").to_numpy(), b.column("layer_id").to_numpy())
                pos = 0
            m = min(need, len(buf) - pos)
            out.append(buf[pos:pos + m])
            mids.append(buf_meta[0][pos:pos + m])
            lids.append(buf_meta[1][pos:pos + m])
            pos += m
            need -= m
        return np.concatenate(out), np.concatenate(mids), np.concatenate(lids)

    rows = []
    truncated = []
    for m in models:
        mid = m["model_id"]
        tensors = {}
        card = [f"conv_levels = {int(m['n_layers'])}", ""]
        for L in by_model.get(mid, []):
            n, ci, co = int(L["n_filters"]), int(L["in_ch"]), int(L["out_ch"])
            W, mids, lids = take(n)
            assert W.dtype == np.float16, W.dtype
            assert (mids == mid).all() and (lids == L["layer_id"]).all(), "filter order differs"
            if n == ci * co:
                shape = (co, ci, 3, 3)
            else:
                # the truncated last layer: as many in channels as divide n, up to the
                # planned ones (n // ci out channels when ci divides n)
                cin = max(c for c in range(1, ci + 1) if n % c == 0)
                shape = (n // cin, cin, 3, 3)
                truncated.append((m["model_name"], L["layer_id"], n, shape))
            name = f"conv{int(L['conv_depth']):03d}.weight"
            tensors[name] = np.ascontiguousarray(W).reshape(shape)
            card += [f'[layers."{name}"]', f"conv_depth = {int(L['conv_depth'])}", ""]
        if not tensors:
            continue
        fname = f"{m['model_name']}.safetensors"
        save_file(tensors, os.path.join(zoo, fname))
        with open(os.path.join(zoo, f"{m['model_name']}.toml"), "w") as f:
            f.write("\n".join(card))
        rows.append(dict(path=fname, card=f"{m['model_name']}.toml", name=m["model_name"],
                         task=TASK_MAP[m["task"]], visual_category=VISCAT_MAP[m["visual_category"]],
                         architecture=m["architecture"]))
    with open(done + ".tmp", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(done + ".tmp", done)
    for t in truncated:
        log(f"zoo: truncated last layer {t[0]} layer_id {t[1]}: {t[2]} filters written as {list(t[3])}")
    log(f"zoo: {len(rows)} models -> {zoo} ({time.perf_counter() - t0:.1f} s)")


def build_store(fdb, zoo, store, res):
    if os.path.exists(os.path.join(store, ".ingested")):
        log(f"store: reusing {store}")
        return None
    if os.path.exists(store):
        shutil.rmtree(store)
    subprocess.run([fdb, "init", store, "--precision", "f16"], check=True, stdout=subprocess.DEVNULL)
    log("store: filterdb ingest --manifest")
    r = timed([fdb, "ingest", "--store", store, "--manifest", os.path.join(zoo, "manifest.csv")])
    open(os.path.join(store, ".ingested"), "w").close()
    log(f"store: ingest {r['wall']:.2f} s, peak RSS {r['rss_mib']:.0f} MiB")
    with open(os.path.join(res, "ingest.json"), "w") as f:
        json.dump({k: v for k, v in r.items() if k != "stdout"}, f, indent=1)
    return r


# ----------------------------------------------------------------------- filterdb
# The baseline's layer statistics (sparsity + variance entropy, no orthogonality) as one
# `filterdb sql` query: the like-for-like counterpart of the peers' layer_stats stage.
# Per layer over `filters` alone (grouped by the two integer ids, one sorted streaming
# stage), then the names joined onto one row per layer -- as `analyze degeneration` does.
LAYER_SQL = ("SELECT p.model_id, m.name, p.layer_idx, l.layer_name, p.n_filters, p.sparsity, p.entropy "
             "FROM (SELECT model_id, layer_idx, count(*) AS n_filters, "
             "layer_sparsity(weights, 0.01) AS sparsity, variance_entropy(weights) AS entropy "
             "FROM filters GROUP BY model_id, layer_idx) p "
             "JOIN layers l ON p.model_id = l.model_id AND p.layer_idx = l.layer_idx "
             "JOIN models m ON p.model_id = m.model_id ORDER BY p.model_id, p.layer_idx")


def fdb_commands(fdb, store, threads, with_sql=True):
    extra = ["--threads", str(threads)] if threads else []
    cmds = {
        "kl-matrix": [fdb, "analyze", "kl-matrix", "--store", store, "--by", "task",
                      "--format", "json"] + extra,
        "degeneration": [fdb, "analyze", "degeneration", "--store", store, "--all-layers",
                         "--format", "csv"] + extra,
    }
    # the opt-in f32 Gram kernel of orthogonality (not MISSION.md's float64 accumulation;
    # at most 3.9e-6 off): reported beside the default, never instead of it
    cmds["degeneration-f32"] = cmds["degeneration"] + ["--gram-precision", "f32"]
    if with_sql:
        cmds["layer-sql"] = [fdb, "sql", "--store", store, "--format", "csv"] + extra + [LAYER_SQL]
    return cmds


OUTFILE = {"kl-matrix": "filterdb_kl.json", "degeneration": "filterdb_degeneration.csv",
           "degeneration-f32": "filterdb_degeneration_f32.csv", "layer-sql": "filterdb_layer_sql.csv"}


def inproc_seconds(stderr):
    m = re.search(r"([0-9.]+) s \(", stderr) or re.search(r"\(([0-9.]+) s\)", stderr)
    return float(m.group(1)) if m else float("nan")


def run_filterdb(cmds, store, reps, res):
    out = {}
    for part, cmd in cmds.items():
        warm_dir(store)
        timed(cmd)  # warm-up
        runs = []
        for i in range(reps):
            path = os.path.join(res, OUTFILE[part])
            r = timed(cmd, stdout_path=path)
            r["inproc"] = inproc_seconds(r["stderr"])
            runs.append({k: v for k, v in r.items() if k != "stdout"})
            log(f"  filterdb {part:<13s} run {i + 1}: wall {r['wall']:.3f} s (in-process {r['inproc']:.3f} s), "
                f"user {r['user']:.2f} s, sys {r['sys']:.2f} s, peak RSS {r['rss_mib']:.0f} MiB, load1 {r['load1']:.2f}")
        out[part] = dict(cmd=" ".join(cmd), runs=runs,
                         wall=statistics.median(x["wall"] for x in runs),
                         inproc=statistics.median(x["inproc"] for x in runs),
                         rss_mib=max(x["rss_mib"] for x in runs))
    return out


# ----------------------------------------------------------------------- baseline
PEERS = ["polars", "duckdb", "numpy"]


def run_peers(tools, data, res, reps, reuse):
    env = dict(os.environ, POLARS_MAX_THREADS="2",
               PYTHONPATH=BENCH + (":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""))
    out = {}
    for t in tools:
        path = os.path.join(res, f"{t}_b.json")
        runs = []
        if reuse and os.path.exists(path):
            log(f"  {t}: reading {path}")
        else:
            for i in range(reps):
                warm(os.path.join(data, "filters_f16.parquet"))
                r = timed([sys.executable, os.path.join(BENCH, f"bench_{t}.py"), "--data", data,
                           "--layout", "b", "--out", path], env=env)
                with open(path) as f:
                    j = json.load(f)
                runs.append(dict(wall=r["wall"], user=r["user"], sys=r["sys"], rss_mib=r["rss_mib"],
                                 load1=r["load1"], total=j["total_seconds"],
                                 stages={s["stage"]: s["seconds"] for s in j["stages"]}))
                log(f"  {t:<8s} run {i + 1}: pipeline {j['total_seconds']:.3f} s (process wall {r['wall']:.3f} s), "
                    f"peak RSS {r['rss_mib']:.0f} MiB, load1 {r['load1']:.2f}")
            with open(os.path.join(res, f"{t}_b.runs.json"), "w") as f:
                json.dump(runs, f, indent=1)
        with open(path) as f:
            j = json.load(f)
        if not runs:
            rp = os.path.join(res, f"{t}_b.runs.json")
            if os.path.exists(rp):
                with open(rp) as f:
                    runs = json.load(f)
            else:
                runs = [dict(wall=float("nan"), total=j["total_seconds"], rss_mib=j["peak_rss_mib"],
                             stages={s["stage"]: s["seconds"] for s in j["stages"]})]
        # median run by total pipeline time; its stages give the per-part split
        runs_sorted = sorted(runs, key=lambda x: x["total"])
        med = runs_sorted[len(runs_sorted) // 2]
        out[t] = dict(result=j, runs=runs, total=statistics.median(x["total"] for x in runs),
                      wall=statistics.median(x["wall"] for x in runs),
                      rss_mib=max(x["rss_mib"] for x in runs), stages=med["stages"])
    return out


# ---------------------------------------------------------------------- agreement
def parse_degeneration_csv(text):
    """The CSV holds two tables (layers, then per model); return the layer rows."""
    lines = text.splitlines()
    starts = [i for i, l in enumerate(lines) if l.startswith("model,")]
    end = starts[1] if len(starts) > 1 else len(lines)
    return list(csv.DictReader(io.StringIO("\n".join(lines[starts[0]:end]))))


def agreement(data, res, peers):
    import pyarrow.parquet as pq

    inv_task = {v: k for k, v in TASK_MAP.items()}
    with open(os.path.join(res, "filterdb_kl.json")) as f:
        kl = json.load(f)
    fg = [inv_task[g] for g in kl["groups"]]
    fm = np.array(kl["matrix"], dtype=float)
    with open(os.path.join(res, "filterdb_degeneration.csv")) as f:
        deg = parse_degeneration_csv(f.read())
    models = {m["model_name"]: m["model_id"] for m in pq.read_table(os.path.join(data, "models.parquet")).to_pylist()}
    lid = {(L["model_id"], L["conv_depth"]): L["layer_id"]
           for L in pq.read_table(os.path.join(data, "layers.parquet")).to_pylist()}
    fl = {}
    for r in deg:
        depth = int(re.match(r"conv(\d+)\.weight", r["layer_name"]).group(1))
        fl[lid[(models[r["model"]], depth)]] = (int(r["n_filters"]), float(r["sparsity"]), float(r["entropy"]))
    fs = {}
    sql_path = os.path.join(res, "filterdb_layer_sql.csv")
    if os.path.exists(sql_path):
        with open(sql_path) as f:
            for r in csv.DictReader(f):
                depth = int(re.match(r"conv(\d+)\.weight", r["layer_name"]).group(1))
                fs[lid[(models[r["name"]], depth)]] = (int(r["n_filters"]), float(r["sparsity"]), float(r["entropy"]))
    out = {}
    for t, p in peers.items():
        j = p["result"]
        a = {}
        pg = j["kl"]["groups"]
        a["kl_groups_equal"] = sorted(pg) == sorted(fg)
        if a["kl_groups_equal"]:
            idx = [fg.index(g) for g in pg]
            F = fm[np.ix_(idx, idx)]
            P = np.array(j["kl"]["matrix"])
            off = ~np.eye(len(pg), dtype=bool)
            a["kl_max_abs"] = float(np.max(np.abs(F - P)[off])) if off.any() else 0.0
            a["kl_max_rel"] = float(np.max(np.abs(F - P)[off] / np.abs(P)[off])) if off.any() else 0.0
            a["kl_range"] = [float(P[off].min()), float(P[off].max())] if off.any() else [0, 0]
        L = j["layers"]
        a["layers_peer"] = len(L["layer_id"])
        a["layers_filterdb"] = len(fl)
        a["layers_equal"] = sorted(L["layer_id"]) == sorted(fl)
        if a["layers_equal"]:
            n_ok = all(fl[l][0] == n for l, n in zip(L["layer_id"], L["n"]))
            a["n_filters_equal"] = n_ok
            a["sparsity_max_abs"] = float(max(abs(fl[l][1] - s) for l, s in zip(L["layer_id"], L["sparsity"])))
            a["entropy_max_abs"] = float(max(abs(fl[l][2] - e) for l, e in zip(L["layer_id"], L["entropy"])))
        if fs and sorted(L["layer_id"]) == sorted(fs):
            # unrounded values from the `filterdb sql` layer query
            a["sql_sparsity_max_abs"] = float(max(abs(fs[l][1] - s) for l, s in zip(L["layer_id"], L["sparsity"])))
            a["sql_entropy_max_abs"] = float(max(abs(fs[l][2] - e) for l, e in zip(L["layer_id"], L["entropy"])))
            a["sql_entropy_max_rel"] = float(max(abs(fs[l][2] - e) / max(abs(e), 1e-300)
                                                 for l, e in zip(L["layer_id"], L["entropy"])))
        kl_tol = TOL["kl_rel_numpy"] if t == "numpy" else TOL["kl_rel"]
        a["pass"] = bool(a["kl_groups_equal"] and a.get("kl_max_rel", 1) <= kl_tol and a["layers_equal"]
                         and a.get("n_filters_equal") and a.get("sparsity_max_abs", 1) <= TOL["sparsity_abs"]
                         and a.get("entropy_max_abs", 1) <= TOL["entropy_abs"])
        out[t] = a
    return out


# ---------------------------------------------------------------------------- perf
def perf_profile(cmds, res, seconds):
    for part, cmd in cmds.items():
        data = os.path.join(res, f"perf-{part}.data")
        loop = f"end=$((SECONDS+{int(seconds)})); while [ $SECONDS -lt $end ]; do {' '.join(cmd)} >/dev/null 2>&1; done"
        subprocess.run(["perf", "record", "-g", "-F", "999", "-o", data, "--", "bash", "-c", loop],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                              "--percent-limit", "1", "--sort", "symbol"],
                             capture_output=True, text=True).stdout
        with open(os.path.join(res, f"perf-{part}.txt"), "w") as f:
            f.write(rep)
        log(f"\nperf ({part}, {seconds} s, self time, >= 1 %):")
        for l in rep.splitlines():
            if l.strip() and not l.startswith("#"):
                log("  " + l.strip()[:150])


# --------------------------------------------------------------------------- main
def fmt_rate(n, s):
    return f"{n / s / 1e6:.2f}M/s"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--work", default="/var/tmp/filterdb-pipeline")
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each filterdb command (after a warm-up)")
    ap.add_argument("--peer-reps", type=int, default=None, help="runs of each baseline tool (default: --reps)")
    ap.add_argument("--tools", default=",".join(PEERS))
    ap.add_argument("--reuse-baseline", action="store_true", help="read existing <tool>_b.json instead of rerunning")
    ap.add_argument("--threads", type=int, default=None, help="filterdb --threads (default: all cores)")
    ap.add_argument("--no-layer-sql", action="store_true", help="skip the like-for-like layer-stats SQL run")
    ap.add_argument("--perf", type=float, default=0, help="perf record -g each filterdb command for this many s")
    args = ap.parse_args()
    fdb = os.environ.get("FILTERDB_BIN", DEFAULT_BIN)
    tag = f"n{args.n // 1_000_000}m" if args.n >= 1_000_000 else f"n{args.n // 1000}k"
    base = os.path.join(args.work, tag)
    data, zoo, store, res = (os.path.join(base, x) for x in ("data", "zoo", "store", "results"))
    os.makedirs(res, exist_ok=True)
    log(f"filterdb binary {fdb}; N = {args.n:,}; work {base}")

    gen_data(args.n, data)
    build_zoo(data, zoo)
    build_store(fdb, zoo, store, res)

    cmds = fdb_commands(fdb, store, args.threads, with_sql=not args.no_layer_sql)
    log("filterdb:")
    fr = run_filterdb(cmds, store, args.reps, res)
    log("baseline (layout b, float16 Parquet):")
    peers = run_peers([t for t in args.tools.split(",") if t], data, res,
                      args.peer_reps or args.reps, args.reuse_baseline)
    agr = agreement(data, res, peers)

    n = args.n
    f_total = fr["kl-matrix"]["wall"] + fr["degeneration"]["wall"]
    f_rss = max(fr["kl-matrix"]["rss_mib"], fr["degeneration"]["rss_mib"])
    log(f"\nWhole pipeline at N = {n:,} filters (filterdb = kl-matrix + degeneration, median wall of "
        f"{args.reps}; peers = median of their stage sums; ratio = filterdb filters/s / peer filters/s):")
    log("| tool | seconds | filters/s | peak RSS MiB | filterdb / peer |")
    log("|---|---|---|---|---|")
    log(f"| filterdb (2 processes, 3 passes) | {f_total:.3f} | {fmt_rate(n, f_total)} | {f_rss:.0f} | 1.00 |")
    table = []
    like = None
    if "layer-sql" in fr:
        like = fr["kl-matrix"]["wall"] + fr["layer-sql"]["wall"]
        l_rss = max(fr["kl-matrix"]["rss_mib"], fr["layer-sql"]["rss_mib"])
        log(f"| filterdb like-for-like (kl-matrix + layer-stats SQL, no orthogonality) | {like:.3f} | "
            f"{fmt_rate(n, like)} | {l_rss:.0f} | - |")
    f32_total = fr["kl-matrix"]["wall"] + fr["degeneration-f32"]["wall"]
    log(f"| filterdb, degeneration --gram-precision f32 (opt-in) | {f32_total:.3f} | "
        f"{fmt_rate(n, f32_total)} | - | - |")
    for t, p in peers.items():
        ratio = (n / f_total) / (n / p["total"])
        r2 = (n / like) / (n / p["total"]) if like else float("nan")
        r3 = p["total"] / f32_total
        table.append(dict(tool=t, seconds=p["total"], wall=p["wall"], rss_mib=p["rss_mib"], ratio=ratio,
                          ratio_like_for_like=r2, ratio_gram_f32=r3))
        log(f"| {t} (process wall {p['wall']:.3f} s) | {p['total']:.3f} | {fmt_rate(n, p['total'])} | "
            f"{p['rss_mib']:.0f} | {ratio:.2f} (like-for-like {r2:.2f}, f32 Gram {r3:.2f}) |")

    log("\nPer part (seconds; ratio = peer time / filterdb time, > 1 means filterdb faster):")
    log("| tool | layer stats (degeneration) | ratio | PCA + range + hist + KL (kl-matrix) | ratio | load (numpy only) |")
    log("|---|---|---|---|---|---|")
    fk, fd = fr["kl-matrix"]["wall"], fr["degeneration"]["wall"]
    log(f"| filterdb wall (in-process) | {fd:.3f} ({fr['degeneration']['inproc']:.3f}) | 1.00 | "
        f"{fk:.3f} ({fr['kl-matrix']['inproc']:.3f}) | 1.00 | - |")
    fsql = fr["layer-sql"]["wall"] if "layer-sql" in fr else float("nan")
    if "layer-sql" in fr:
        log(f"| filterdb layer-stats SQL (no orthogonality) | {fsql:.3f} | - | - | - | - |")
    log(f"| filterdb degeneration --gram-precision f32 | {fr['degeneration-f32']['wall']:.3f} | - | - | - | - |")
    with open(os.path.join(res, OUTFILE["degeneration"])) as f64_csv, \
            open(os.path.join(res, OUTFILE["degeneration-f32"])) as f32_csv:
        same = f64_csv.read() == f32_csv.read()
    log(f"  (its CSV, 4 decimals, {'equals' if same else 'DIFFERS from'} the default's)")
    parts = {}
    for t, p in peers.items():
        s = p["stages"]
        lay = s.get("layer_stats", 0.0)
        load = s.get("load", 0.0)
        klp = sum(v for k, v in s.items() if k not in ("layer_stats", "load"))
        parts[t] = dict(layer_stats=lay, kl=klp, load=load)
        log(f"| {t} | {lay:.3f} | {lay / fd:.2f} (vs SQL {lay / fsql:.2f}) | {klp:.3f} | {klp / fk:.2f} | {load:.3f} |")

    log("\nAgreement (filterdb vs peer; tolerances " + json.dumps(TOL) + "):")
    for t, a in agr.items():
        log(f"  {t}: " + json.dumps(a))
    summary = dict(n=n, binary=fdb, reps=args.reps, filterdb=fr, peers={t: {k: v for k, v in p.items() if k != "result"}
                                                                        for t, p in peers.items()},
                   table=table, parts=parts, agreement=agr, tolerances=TOL)
    with open(os.path.join(res, "pipeline.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log(f"-> {os.path.join(res, 'pipeline.json')}")
    if args.perf:
        perf_profile({k: v for k, v in cmds.items() if k in ("kl-matrix", "degeneration")}, res, args.perf)
    return 0 if all(a["pass"] for a in agr.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
