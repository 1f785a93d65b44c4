"""Compare filterdb's SQL functions with the independent reference (reference.py).

Builds stores with the `filterdb` binary ($FILTERDB_BIN, default
${CARGO_TARGET_DIR:-target}/debug/filterdb):

  synthetic-f16, synthetic-f32   `filterdb gen` zoo, ingested with --manifest
  real-TAG-f16, real-TAG-f32     the real trained CNNs of one pinned wheel of fetch_models.py
                                 (TAG: rapidocr = paddle2onnx exports, Constant-node
                                 weights; nudenet = a PyTorch export, initializers), from
                                 their safetensors conversion plus card
  onnx-TAG-f32                   the same wheel's .onnx files ingested directly with
                                 filterdb's ONNX reader
  npz-TAG-f32                    the same arrays as .npz archives (numpy.savez_compressed)
                                 with the same cards, through filterdb's NumPy reader

then, for each store, runs every SQL function through `filterdb sql --format json` and
compares with reference.py computed from the SAME stored values (the store's Parquet files
read with pyarrow), so float16 storage is not an error source there; separately, the f32
stores must hold the source safetensors values bit for bit and the f16 stores the sources
rounded once to float16.

A function that does not exist yet is a failed check ("function missing"), never a skip.
Prints a summary table and, last, the line `N passed, M failed`; exits 1 on any failure.

Options (environment): FILTERDB_BIN, FILTERDB_FIXTURES (see fetch_models.py),
REFERENCE_WORK (scratch folder, default a fresh temp dir), REFERENCE_ONLY=synthetic|real.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference as ref  # noqa: E402
import fetch_models  # noqa: E402

# ------------------------------------------------------------------------- tolerances
# Both sides read the same stored f16/f32 values and accumulate in float64, so the only
# differences are summation order and one-pass (moment) versus two-pass/SVD algorithms.
#: norms, means, sums of moments: float64 accumulation, ~1e-9 relative.
RTOL_MOMENT = 1e-9
ATOL_MOMENT = 1e-12
#: peak_scale returns float32: an IEEE f32 division of the stored values; we allow 1 ulp
#: (a reciprocal-then-multiply kernel) and report the largest ulp distance seen.
MAX_ULP_PEAK = 1
#: PCA eigenvalues from a moment-based covariance vs sklearn's SVD: relative to the largest
#: eigenvalue. Components (unit vectors) within 1e-6 when their eigenvalue is separated from
#: its neighbours by more than 1e-4 of the largest (else the component is ill-defined and only
#: its eigenvalue is checked).
RTOL_EIGVAL = 1e-9
ATOL_COMPONENT = 1e-6
MIN_REL_GAP = 1e-4
#: Coefficients (pca_project with the same basis) and coef_range: ~1e-12 absolute on O(1)
#: values.
ATOL_COEF = 1e-12
#: Histograms: exact counts, except values within EDGE_TOL of a bin edge may move to the
#: neighbouring bin.
EDGE_TOL = 1e-12
#: Variance entropy (moments+eigen vs SVD), orthogonality: absolute on values of order 1.
ATOL_ENTROPY = 1e-9
ATOL_ORTHO = 1e-9
#: With gram_precision 'f32', a layer with n_out^2 * n_in * 9 >= 2^20 (stores hold
#: float16/float32) takes filterdb's f32 Gram kernel
#: (crates/udf/src/aggregate/orthogonality/gram32.rs): dot products summed in f32 over
#: k-blocks of at most 64 dimensions, whose worst-case error is gamma_65 = 65 u / (1 - 65 u),
#: u = 2^-24 (3.9e-6).
ORTHO_F32_WORK = 1 << 20
ATOL_ORTHO_F32 = 65 * 2.0**-24 / (1 - 65 * 2.0**-24)
#: Sparsity is a ratio of counts with the threshold computed in float64 from the same
#: stored values: exact.
ATOL_SPARSITY = 0.0
#: KL drift: ~1e-6 relative (logs of probabilities down to float32 epsilon / (bins*...)).
RTOL_KL = 1e-6

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


# ---------------------------------------------------------------------------- results


class Results:
    def __init__(self):
        self.rows = []  # (store, check, group_count, status, message)

    def add(self, store, check, ok, msg="", n=1):
        self.rows.append((store, check, n, "PASS" if ok else "FAIL", msg))
        if not ok:
            print(f"FAIL [{store}] {check}: {msg}", flush=True)

    def passed(self):
        return sum(1 for r in self.rows if r[3] == "PASS")

    def failed(self):
        return sum(1 for r in self.rows if r[3] == "FAIL")

    def table(self):
        w = max(len(r[1]) for r in self.rows) if self.rows else 10
        s = max(len(r[0]) for r in self.rows) if self.rows else 10
        lines = [f"{'store':<{s}}  {'check':<{w}}  {'groups':>6}  result  detail"]
        for store, check, n, st, msg in self.rows:
            lines.append(f"{store:<{s}}  {check:<{w}}  {n:>6}  {st:<6}  {msg[:160]}")
        return "\n".join(lines)


class Missing(Exception):
    pass


class SqlError(Exception):
    pass


MISSING_RE = re.compile(r"Invalid function '([^']+)'|function '?([A-Za-z_0-9]+)'? (?:not found|does not exist)|"
                        r"No function named '?([A-Za-z_0-9]+)")


class Filterdb:
    def __init__(self, binary: str):
        self.bin = binary

    def run(self, *args, check=True):
        p = subprocess.run([self.bin, *args], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise SqlError(f"filterdb {' '.join(args[:3])} failed ({p.returncode}): {p.stderr.strip()[:2000]}")
        return p

    def sql(self, store, query):
        p = self.run("sql", "--store", str(store), "--format", "json", query, check=False)
        if p.returncode != 0:
            m = MISSING_RE.search(p.stderr)
            if m:
                name = next(g for g in m.groups() if g)
                raise Missing(f"function missing: {name}")
            raise SqlError(p.stderr.strip().splitlines()[-1][:600] if p.stderr.strip() else f"exit {p.returncode}")
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def lit(x: float) -> str:
    return f"CAST('{float(x)!r}' AS DOUBLE)"


def fnum(v):
    return float("nan") if v is None else float(v)


# ------------------------------------------------------------------------ store data


class StoreData:
    """The store's filters (and layers, models) read straight from its Parquet files."""

    def __init__(self, store: Path):
        files = sorted(glob.glob(str(store / "filters" / "*" / "*.parquet")))
        t = pq.read_table(files) if len(files) == 1 else _concat([pq.read_table(f) for f in files])
        t = t.sort_by("filter_id")
        self.dtype = t.schema.field("w0").type
        self.w_stored = np.stack([t.column(f"w{i}").to_numpy() for i in range(9)], axis=1)
        self.w = self.w_stored.astype(np.float64)
        self.filter_id = t.column("filter_id").to_numpy()
        self.model_id = t.column("model_id").to_numpy()
        self.layer_idx = t.column("layer_idx").to_numpy()
        self.out_channel = t.column("out_channel").to_numpy()
        self.in_channel = t.column("in_channel").to_numpy()
        lt = _concat([pq.read_table(f) for f in sorted(glob.glob(str(store / "layers" / "*" / "*.parquet")))])
        self.layers = lt.to_pylist()
        mt = _concat([pq.read_table(f) for f in sorted(glob.glob(str(store / "models" / "*" / "*.parquet")))])
        self.models = {m["model_id"]: m for m in mt.to_pylist()}
        self.layer_key = {(L["model_id"], L["layer_idx"]): L for L in self.layers}
        key = self.model_id.astype(np.int64) * 100000 + self.layer_idx.astype(np.int64)
        order = np.argsort(key, kind="stable")
        ks, starts = np.unique(key[order], return_index=True)
        ends = list(starts[1:]) + [len(order)]
        self.groups = {(int(k // 100000), int(k % 100000)): order[s:e] for k, s, e in zip(ks, starts, ends)}

    def column(self, name):
        """A per-filter model or layer attribute (task, visual_category, conv_depth_norm)."""
        if name in ("task", "visual_category", "name"):
            vals = {mid: m[name] for mid, m in self.models.items()}
            return np.array([vals[m] for m in self.model_id], dtype=object)
        vals = {k: L[name] for k, L in self.layer_key.items()}
        return np.array([vals[(m, l)] for m, l in zip(self.model_id, self.layer_idx)], dtype=object)


def _concat(tables):
    import pyarrow as pa
    return pa.concat_tables(tables, promote_options="default")


# ------------------------------------------------------------------------ the checks


class Checker:
    def __init__(self, fdb: Filterdb, res: Results, label: str, store: Path, sources: dict):
        self.fdb, self.res, self.label, self.store = fdb, res, label, store
        self.sources = sources  # model name -> (safetensors path, layout)
        self.d = StoreData(store)
        self.sql_basis = None
        self.sql_range = None

    def add(self, check, ok, msg="", n=1):
        self.res.add(self.label, check, ok, msg, n)

    def q(self, check, query):
        """Run a query; a missing function or SQL error is a failed check (returns None)."""
        try:
            return self.fdb.sql(self.store, query)
        except Missing as e:
            self.add(check, False, str(e))
        except SqlError as e:
            self.add(check, False, f"SQL error: {e}")
        return None

    # -- storage
    def check_storage(self):
        d = self.d
        prec = "f32" if str(d.dtype) == "float" else "f16"
        worst = []
        n_models = 0
        for mid, m in d.models.items():
            path, layout = self.sources[m["name"]]
            tensors = load_file(str(path))
            n_models += 1
            for L in (x for x in d.layers if x["model_id"] == mid):
                t = tensors[L["layer_name"]]
                if layout == "hwio":
                    t = np.transpose(t, (3, 2, 0, 1))
                src = np.ascontiguousarray(t).reshape(-1, 9)
                idx = d.groups[(mid, L["layer_idx"])]
                stored = d.w_stored[idx]
                ids = d.filter_id[idx] - L["first_filter_id"]
                want = src[ids]
                want = want.astype(np.float32) if prec == "f32" else want.astype(np.float16)
                if stored.dtype != want.dtype:
                    worst.append(f"{m['name']}/{L['layer_name']}: dtype {stored.dtype} vs {want.dtype}")
                    continue
                same = (stored.view(np.uint32 if prec == "f32" else np.uint16)
                        == want.view(np.uint32 if prec == "f32" else np.uint16))
                if not same.all():
                    k = np.argwhere(~same)[0]
                    worst.append(f"{m['name']}/{L['layer_name']} filter {ids[k[0]]} w{k[1]}: "
                                 f"got {stored[k[0], k[1]]!r} expected {want[k[0], k[1]]!r} "
                                 f"({(~same).sum()} weights differ)")
        rule = "bit-exact f32" if prec == "f32" else "source rounded once to f16"
        self.add(f"stored weights == sources ({rule})", not worst, "; ".join(worst[:3]), n_models)

    # -- per filter
    def check_filter_functions(self):
        d = self.d
        k = max(1, len(d.filter_id) // 5000)
        sel = d.filter_id % k == 0
        exp_w = d.w[sel]
        ids = d.filter_id[sel]
        for fn, f in (("l1_norm", ref.l1_norm), ("l2_norm", ref.l2_norm), ("linf_norm", ref.linf_norm)):
            rows = self.q(fn, f"SELECT filter_id, {fn}(weights) AS v FROM filters WHERE filter_id % {k} = 0")
            if rows is None:
                continue
            got = {r["filter_id"]: fnum(r.get("v")) for r in rows}
            g = np.array([got.get(int(i), np.nan) for i in ids])
            e = f(exp_w)
            bad = ~np.isclose(g, e, rtol=RTOL_MOMENT, atol=ATOL_MOMENT)
            self.add(fn, not bad.any(), _first_bad(bad, ids, g, e, "filter"), len(ids))
        rows = self.q("peak_scale", f"SELECT filter_id, peak_scale(weights) AS v FROM filters WHERE filter_id % {k} = 0")
        if rows is not None:
            got = {r["filter_id"]: r.get("v") for r in rows}
            e = ref.peak_scale(exp_w)
            g = np.array([got.get(int(i)) or [np.nan] * 9 for i in ids], dtype=np.float64).astype(np.float32)
            ulps = np.abs(g.view(np.int32).astype(np.int64) - e.view(np.int32).astype(np.int64))
            ulps[np.isnan(g)] = 1 << 40
            bad = (ulps > MAX_ULP_PEAK).any(axis=1)
            msg = f"max {ulps.max()} ulp" if not bad.any() else _first_bad(bad, ids, g, e, "filter")
            self.add("peak_scale", not bad.any(), msg, len(ids))
            zero = None
            for arg in ("arrow_cast(make_array(0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0), 'FixedSizeList(9, Float32)')",
                        "make_array(0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0)"):
                try:
                    zero = self.fdb.sql(self.store, f"SELECT peak_scale({arg}) AS v")
                    break
                except (Missing, SqlError) as e:
                    err = e
            if zero is None:
                self.add("peak_scale (zero filter)", False, f"SQL error: {err}")
            if zero is not None:
                v = zero[0].get("v")
                self.add("peak_scale (zero filter)", v is not None and all(x == 0 for x in v), f"got {v}")

    # -- per layer
    def _layer_check(self, check, sql_expr, f, atol, rtol=0.0, ambiguous=None):
        rows = self.q(check, f"SELECT model_id, layer_idx, {sql_expr} AS v FROM filters GROUP BY model_id, layer_idx")
        if rows is None:
            return
        got = {(r["model_id"], r["layer_idx"]): r.get("v") for r in rows}
        bad = []
        worst, wide = 0.0, 0  # the largest error, and count, of the f32-kernel layers (reported)
        for key, idx in self.d.groups.items():
            e = f(idx)
            g = got.get(key, "absent")
            if g == "absent":
                bad.append(f"layer {key}: no row")
                continue
            if e is None or (isinstance(e, float) and math.isnan(e)):
                # undefined by the definition (e.g. fewer than 2 rows): NULL, NaN or 0 accepted
                if g is None or (isinstance(g, float) and (math.isnan(g) or g == 0.0)):
                    continue
                bad.append(f"layer {key} ({ambiguous}): got {g!r}, expected NULL/NaN")
                continue
            tol = atol(idx) if callable(atol) else atol
            if g is not None and callable(atol) and tol == ATOL_ORTHO_F32:
                worst = max(worst, abs(float(g) - e))
                wide += 1
            if g is None or not math.isclose(float(g), e, rel_tol=rtol, abs_tol=tol) and not (tol == 0 and float(g) == e):
                bad.append(f"layer {key} {self._lname(key)}: got {g!r} expected {e!r}")
        msg = "; ".join(bad[:3]) + (f" (+{len(bad)-3} more)" if len(bad) > 3 else "")
        if callable(atol) and not bad and wide:
            msg = f"{wide} layers in the f32 Gram kernel's tolerance, largest error {worst:.1e}"
        self.add(check, not bad, msg, len(self.d.groups))

    def _lname(self, key):
        L = self.d.layer_key.get(key)
        return L["layer_name"] if L else ""

    def check_layer_functions(self):
        d = self.d
        W = d.w

        def atol_ortho(i):
            n_out, n_in = len(np.unique(d.out_channel[i])), len(np.unique(d.in_channel[i]))
            return ATOL_ORTHO_F32 if n_out * n_out * n_in * 9 >= ORTHO_F32_WORK else ATOL_ORTHO
        self._layer_check("layer_sparsity", "layer_sparsity(weights)", lambda i: ref.layer_sparsity(W[i]), ATOL_SPARSITY)
        self._layer_check("layer_sparsity(ratio=0.05)", "layer_sparsity(weights, 0.05)",
                          lambda i: ref.layer_sparsity(W[i], 0.05), ATOL_SPARSITY)
        self._layer_check("variance_entropy", "variance_entropy(weights)", lambda i: ref.variance_entropy(W[i]), ATOL_ENTROPY)

        def norm(i, ratio=None):
            x = W[i] if ratio is None else W[i][~ref.sparse_mask(W[i], ratio)]
            if x.shape[0] < 1:
                return None
            return ref.variance_entropy(x) / ref.entropy_norm_curve(x.shape[0])

        self._layer_check("variance_entropy_norm", "variance_entropy_norm(weights)", norm, ATOL_ENTROPY)
        self._layer_check("variance_entropy_clean", "variance_entropy_clean(weights)",
                          lambda i: ref.variance_entropy_clean(W[i]), ATOL_ENTROPY)
        self._layer_check("variance_entropy_clean(ratio=0.05)", "variance_entropy_clean(weights, 0.05)",
                          lambda i: ref.variance_entropy_clean(W[i], 0.05), ATOL_ENTROPY)
        self._layer_check("variance_entropy_clean_norm", "variance_entropy_clean_norm(weights)",
                          lambda i: norm(i, 0.01), ATOL_ENTROPY, ambiguous="no non-sparse filter")
        self._layer_check("variance_entropy_clean_norm(ratio=0.05)", "variance_entropy_clean_norm(weights, 0.05)",
                          lambda i: norm(i, 0.05), ATOL_ENTROPY, ambiguous="no non-sparse filter")
        self._layer_check("orthogonality", "orthogonality(weights, out_channel, in_channel)",
                          lambda i: ref.orthogonality(W[i], d.out_channel[i], d.in_channel[i]), ATOL_ORTHO,
                          ambiguous="one out channel")
        for call in ("orthogonality(weights, out_channel, in_channel, 'f32')",
                     "layer_degeneration(weights, out_channel, in_channel, 0.01, 'f32')['orthogonality']"):
            self._layer_check(call, call, lambda i: ref.orthogonality(W[i], d.out_channel[i], d.in_channel[i]),
                              atol_ortho, ambiguous="one out channel")
        # layer_degeneration: every field of the one-pass struct against the same references
        for ratio in (None, 0.05):
            r = 0.01 if ratio is None else ratio
            call = ("layer_degeneration(weights, out_channel, in_channel"
                    + ("" if ratio is None else f", {ratio}") + ")")
            fields = [
                ("n_filters", lambda i: float(len(i)), 0.0),
                ("sparsity", lambda i, r=r: ref.layer_sparsity(W[i], r), ATOL_SPARSITY),
                ("entropy", lambda i: ref.variance_entropy(W[i]), ATOL_ENTROPY),
                ("entropy_norm", norm, ATOL_ENTROPY),
                ("entropy_clean", lambda i, r=r: ref.variance_entropy_clean(W[i], r), ATOL_ENTROPY),
                ("entropy_clean_norm", lambda i, r=r: norm(i, r), ATOL_ENTROPY),
                ("orthogonality", lambda i: ref.orthogonality(W[i], d.out_channel[i], d.in_channel[i]), ATOL_ORTHO),
            ]
            for field, f, atol in fields:
                self._layer_check(f"{call}['{field}']", f"{call}['{field}']", f, atol,
                                  ambiguous="one out channel / no non-sparse filter")

    def check_depth_buckets(self):
        rows = self.q("depth_bucket (layers)", "SELECT model_id, layer_idx, conv_depth_norm, depth_bucket(conv_depth_norm) AS b FROM layers")
        if rows is not None:
            bad = [f"layer ({r['model_id']},{r['layer_idx']}) norm {r['conv_depth_norm']!r}: got {r.get('b')!r} expected {ref.depth_bucket(r['conv_depth_norm'])!r}"
                   for r in rows if r.get("b") != ref.depth_bucket(r["conv_depth_norm"])]
            self.add("depth_bucket (layers)", not bad and len(rows) == len(self.d.layers), "; ".join(bad[:3]), len(rows))
        edges = [0.0, 1e-12, 0.1, 0.1 + 1e-12, 0.2, 0.3, 3 / 10, 0.30000000000000004, 0.5, 0.7, 0.9, 0.9000001, 1.0]
        vals = ", ".join(f"({lit(x)})" for x in edges)
        rows = self.q("depth_bucket (edges)", f"SELECT x, depth_bucket(x) AS b FROM (VALUES {vals}) AS t(x)")
        if rows is not None:
            bad = [f"{r['x']!r}: got {r.get('b')!r} expected {ref.depth_bucket(r['x'])!r}" for r in rows
                   if r.get("b") != ref.depth_bucket(r["x"])]
            self.add("depth_bucket (edges)", not bad and len(rows) == len(edges), "; ".join(bad[:4]), len(edges))

    # -- PCA, coefficients, histograms, drift
    BASIS_CTE = "WITH b AS (SELECT pca_fit(peak_scale(weights)) AS basis FROM filters)"

    def _compare_basis(self, check, got: dict, x: np.ndarray, n_groups=1):
        e = ref.pca_fit(x)
        g = ref.Basis.from_sql(got)
        msgs = []
        if g.n != e.n:
            msgs.append(f"n got {g.n} expected {e.n}")
        if not np.allclose(g.mean, e.mean, rtol=RTOL_MOMENT, atol=ATOL_MOMENT):
            msgs.append(f"mean max diff {np.abs(g.mean - e.mean).max():.3g}")
        atol_ev = RTOL_EIGVAL * max(e.explained_variance[0], 1e-300)
        if not np.allclose(g.explained_variance, e.explained_variance, rtol=0, atol=atol_ev):
            msgs.append(f"explained_variance got {g.explained_variance.tolist()} expected {e.explained_variance.tolist()}")
        if not np.allclose(g.explained_variance_ratio, e.explained_variance_ratio, rtol=0, atol=RTOL_EIGVAL):
            msgs.append(f"explained_variance_ratio max diff {np.abs(g.explained_variance_ratio - e.explained_variance_ratio).max():.3g}")
        ev = e.explained_variance
        checked = 0
        for i in range(9):
            gap = min([abs(ev[i] - ev[j]) for j in (i - 1, i + 1) if 0 <= j < 9])
            if gap <= MIN_REL_GAP * ev[0]:
                continue
            checked += 1
            diff = np.abs(g.components[i] - e.components[i]).max()
            if diff > ATOL_COMPONENT:
                flipped = np.abs(g.components[i] + e.components[i]).max() <= ATOL_COMPONENT
                msgs.append(f"component {i} {'has the wrong sign' if flipped else f'differs by {diff:.3g}'}: "
                            f"got {np.round(g.components[i], 6).tolist()} expected {np.round(e.components[i], 6).tolist()}")
        rule_ok = np.array_equal(ref.apply_sign_rule(g.components), g.components)
        if not rule_ok:
            msgs.append("returned components break the sign rule")
        self.add(check, not msgs, "; ".join(msgs[:3]) or f"{checked}/9 components compared", n_groups)
        return g

    def check_pca(self):
        d = self.d
        xs = ref.peak_scale(d.w).astype(np.float64)
        self.sklearn_agrees = ref.sklearn_sign_rule_agrees(xs)
        rows = self.q("pca_fit(peak_scale) global", "SELECT pca_fit(peak_scale(weights)) AS basis FROM filters")
        if rows is not None:
            self.sql_basis = self._compare_basis("pca_fit(peak_scale) global", rows[0]["basis"], xs)
        rows = self.q("pca_fit(raw weights) global", "SELECT pca_fit(weights) AS basis FROM filters")
        if rows is not None:
            self._compare_basis("pca_fit(raw weights) global", rows[0]["basis"], d.w)
        rows = self.q("pca_fit(peak_scale) per task",
                      "SELECT task, pca_fit(peak_scale(weights)) AS basis FROM filters_meta GROUP BY task")
        if rows is not None:
            task = d.column("task")
            groups = {r["task"]: r["basis"] for r in rows}
            for t in sorted(set(task)):
                if (task == t).sum() < 10:
                    continue
                if t not in groups:
                    self.add(f"pca_fit(peak_scale) task={t}", False, "no row")
                else:
                    self._compare_basis(f"pca_fit(peak_scale) task={t}", groups[t], xs[task == t])

    def coefficients(self, basis: ref.Basis):
        return ref.pca_project(ref.peak_scale(self.d.w).astype(np.float64), basis)

    def check_projection(self):
        if self.sql_basis is None:
            self.add("pca_project", False, "not checked: needs pca_fit (its check failed above)")
            self.add("coef_range", False, "not checked: needs pca_fit")
            return
        d = self.d
        k = max(1, len(d.filter_id) // 5000)
        rows = self.q("pca_project", f"{self.BASIS_CTE} SELECT filter_id, pca_project(peak_scale(weights), b.basis) AS c "
                                     f"FROM filters CROSS JOIN b WHERE filter_id % {k} = 0")
        C = self.coefficients(self.sql_basis)
        if rows is not None:
            sel = d.filter_id % k == 0
            got = {r["filter_id"]: r.get("c") for r in rows}
            g = np.array([got.get(int(i)) or [np.nan] * 9 for i in d.filter_id[sel]], dtype=np.float64)
            e = C[sel]
            bad = ~np.isclose(g, e, rtol=0, atol=ATOL_COEF).all(axis=1)
            self.add("pca_project", not bad.any(), _first_bad(bad, d.filter_id[sel], g, e, "filter")
                     or f"max diff {np.nanmax(np.abs(g - e)):.2g}", int(sel.sum()))
        rows = self.q("coef_range", f"{self.BASIS_CTE} SELECT coef_range(pca_project(peak_scale(weights), b.basis)) AS r FROM filters CROSS JOIN b")
        lo, hi = ref.coef_range(C)
        if rows is not None:
            r = rows[0]["r"]
            ok = abs(r["min"] - lo) <= ATOL_COEF and abs(r["max"] - hi) <= ATOL_COEF
            self.add("coef_range", ok, f"got ({r['min']!r}, {r['max']!r}) expected ({lo!r}, {hi!r})")
            if ok:
                lo, hi = r["min"], r["max"]
        self.sql_range = (lo, hi)

    def _group_keys(self, by):
        d = self.d
        if by == "depth_bucket":
            return np.array([ref.depth_bucket(v) for v in d.column("conv_depth_norm")], dtype=object), "depth_bucket(conv_depth_norm)"
        return d.column(by), by

    def check_histograms_and_drift(self):
        if self.sql_basis is None or self.sql_range is None:
            for c in ("coef_histogram", "kl_drift"):
                self.add(c, False, "not checked: needs pca_fit and coef_range")
            return
        lo, hi = self.sql_range
        C = self.coefficients(self.sql_basis)
        for bins in (70, 20):
            bins_arg = "" if bins == 70 else f", {bins}"
            name = f"coef_histogram global bins={bins}"
            rows = self.q(name, f"{self.BASIS_CTE} SELECT coef_histogram(pca_project(peak_scale(weights), b.basis), {lit(lo)}, {lit(hi)}{bins_arg}) AS h FROM filters CROSS JOIN b")
            if rows is not None:
                self._compare_hist(name, rows[0]["h"], C, lo, hi, bins)
        for by in ("task", "visual_category", "depth_bucket"):
            keys, expr = self._group_keys(by)
            name = f"coef_histogram by {by}"
            rows = self.q(name, f"{self.BASIS_CTE} SELECT {expr} AS g, coef_histogram(pca_project(peak_scale(weights), b.basis), {lit(lo)}, {lit(hi)}) AS h "
                                f"FROM filters_meta CROSS JOIN b GROUP BY {expr}")
            sql_h = {}
            if rows is not None:
                sql_h = {r["g"]: r["h"] for r in rows}
                msgs = []
                for gk in sorted(set(keys), key=str):
                    if gk not in sql_h:
                        msgs.append(f"{by}={gk}: no row")
                        continue
                    m = self._compare_hist(None, sql_h[gk], C[keys == gk], lo, hi, 70)
                    if m:
                        msgs.append(f"{by}={gk}: {m}")
                self.add(name, not msgs, "; ".join(msgs[:2]), len(set(keys)))
            self._check_kl(by, expr, keys, C, lo, hi, sql_h)

    def _compare_hist(self, name, h, C, lo, hi, bins):
        msgs = []
        if h.get("bins") != bins or h.get("lo") != lo or h.get("hi") != hi:
            msgs.append(f"header got lo={h.get('lo')!r} hi={h.get('hi')!r} bins={h.get('bins')} expected {lo!r} {hi!r} {bins}")
        e = ref.coef_histogram(C, lo, hi, bins)
        counts = h.get("counts") or []
        if len(counts) != 9 * bins:
            msgs.append(f"counts has {len(counts)} entries, expected {9 * bins}")
        else:
            g = np.asarray(counts, dtype=np.int64).reshape(9, bins)
            slack = ref.near_edge_counts(C, lo, hi, bins, EDGE_TOL)
            diff = np.abs(g - e)
            if (diff > slack).any():
                i, b = np.argwhere(diff > slack)[0]
                msgs.append(f"coefficient {i} bin {b}: got {g[i, b]} expected {e[i, b]} ({int((diff > slack).sum())} bins differ)")
            tot = np.asarray(h.get("total") or [], dtype=np.int64)
            if tot.shape != (9,) or (np.abs(tot - e.sum(axis=1)) > slack.sum(axis=1)).any():
                msgs.append(f"total got {tot.tolist()} expected {e.sum(axis=1).tolist()}")
        if name is not None:
            self.add(name, not msgs, "; ".join(msgs))
        return "; ".join(msgs)

    def _check_kl(self, by, expr, keys, C, lo, hi, sql_h):
        ratio = self.sql_basis.explained_variance_ratio
        for weighted in (True, False):
            name = f"kl_drift matrix by {by} ({'w=explained_variance_ratio' if weighted else 'w=1/9'})"
            warg = ", b.basis['explained_variance_ratio']" if weighted else ""
            rows = self.q(name, f"{self.BASIS_CTE}, h AS (SELECT {expr} AS g, coef_histogram(pca_project(peak_scale(weights), b.basis), {lit(lo)}, {lit(hi)}) AS h "
                                f"FROM filters_meta CROSS JOIN b GROUP BY {expr}) "
                                f"SELECT x.g AS ga, y.g AS gb, kl_drift(x.h, y.h{warg}) AS d, x.h AS ha, y.h AS hb FROM h x CROSS JOIN h y CROSS JOIN b")
            if rows is None:
                continue
            w = ratio if weighted else None
            msgs = []
            ref_h = {gk: ref.coef_histogram(C[keys == gk], lo, hi) for gk in set(keys)}
            for r in rows:
                # (1) kl_drift on the SQL's own histograms: isolates the function
                ha = np.asarray(r["ha"]["counts"], np.int64).reshape(9, -1)
                hb = np.asarray(r["hb"]["counts"], np.int64).reshape(9, -1)
                e1 = ref.kl_drift(ha, hb, lo, hi, w)
                got = fnum(r.get("d"))
                if not math.isclose(got, e1, rel_tol=RTOL_KL, abs_tol=1e-12):
                    msgs.append(f"D({r['ga']}, {r['gb']}) got {got!r} expected {e1!r}")
                    continue
                # (2) end to end, from the reference's own histograms, when the counts agree
                ea, eb = ref_h.get(r["ga"]), ref_h.get(r["gb"])
                if ea is not None and eb is not None and np.array_equal(ea, ha) and np.array_equal(eb, hb):
                    e2 = ref.kl_drift(ea, eb, lo, hi, w)
                    if not math.isclose(got, e2, rel_tol=RTOL_KL, abs_tol=1e-12):
                        msgs.append(f"D({r['ga']}, {r['gb']}) end to end got {got!r} expected {e2!r}")
            n = len(set(keys))
            if len(rows) != n * n:
                msgs.append(f"{len(rows)} pairs, expected {n * n}")
            self.add(name, not msgs, "; ".join(msgs[:2]) + (f" (+{len(msgs) - 2} more)" if len(msgs) > 2 else ""), len(rows))
            if weighted and not msgs and by == "task":
                names, m = ref.kl_matrix(ref_h, lo, hi, w)
                print(f"[{self.label}] KL matrix by task (reference, sorted by column mean):")
                for a, row in zip(names, m):
                    print(f"    {str(a):<32} " + " ".join(f"{v:8.4f}" for v in row))

    def check_layer_meta(self, fixture):
        """Real models: the stored depths against the paper's graph rule (fetch_models.py)."""
        want = {}
        for m in fixture["models"]:
            for L in m["layers"]:
                if L["shape"][2:] == [3, 3]:
                    want[(m["name"], L["tensor"])] = L
        d = self.d
        bad_depth, bad_norm = [], []
        for L in d.layers:
            mname = d.models[L["model_id"]]["name"]
            w = want.get((mname, L["layer_name"]))
            if w is None:
                bad_depth.append(f"{mname}/{L['layer_name']}: not in the source graph")
                continue
            if layer_shape(L) != w["shape"]:
                bad_depth.append(f"{mname}/{L['layer_name']}: shape got {layer_shape(L)} expected {w['shape']}")
            if L["conv_depth"] != w["conv_depth"] or L["groups"] != w["groups"]:
                bad_depth.append(f"{mname}/{L['layer_name']}: conv_depth,groups got {L['conv_depth']},{L['groups']} expected {w['conv_depth']},{w['groups']}")
            if not math.isclose(L["conv_depth_norm"], w["conv_depth_norm"], abs_tol=1e-12):
                bad_norm.append(f"{mname}/{L['layer_name']}: got {L['conv_depth_norm']!r} expected {w['conv_depth']}/({fixture_levels(fixture, mname)}-1) = {w['conv_depth_norm']!r}")
        self.add("layers: shapes, conv_depth, groups (ONNX graph rule, via card)", not bad_depth and len(d.layers) == len(want),
                 "; ".join(bad_depth[:3]) or f"{len(d.layers)} 3x3 layers", len(d.layers))
        bad_counts = model_count_errors(d, fixture)
        self.add("models: conv tensors, 3x3 layers, filters per kernel shape", not bad_counts, "; ".join(bad_counts[:3]), len(d.models))
        self.add("layers.conv_depth_norm (paper: conv_depth / (conv levels - 1))", not bad_norm,
                 f"{len(bad_norm)} layers differ, e.g. " + "; ".join(bad_norm[:2]) if bad_norm else "", len(d.layers))

    # -- exports (raw PLAIN weight pages, hand-encoded DELTA_BINARY_PACKED ids, npy)
    def check_export(self):
        d = self.d
        # The first task's slice through filters_meta (semi joins run as SemiFilterExec).
        task = sorted({m["task"] for m in d.models.values()})[0]
        mids = sorted(mid for mid, m in d.models.items() if m["task"] == task)
        sel = np.isin(d.model_id, mids)
        cols = ["filter_id", "model_id", "layer_idx", "out_channel", "in_channel"]
        query = (f"SELECT {', '.join(cols)}, weights FROM filters_meta "
                 f"WHERE task = '{task}' ORDER BY filter_id")
        out = Path(tempfile.mkdtemp(prefix="filterdb-export-"))
        bits = np.uint32 if d.w_stored.dtype == np.float32 else np.uint16
        want_w = d.w_stored[sel].view(bits)
        for fmt in ("parquet", "npy"):
            path = out / f"slice.{fmt}"
            try:
                self.fdb.run("export", "--store", str(self.store), "--format", fmt, "-o", str(path),
                             "--query", query)
            except SqlError as e:
                self.add(f"export {fmt} reads back (pyarrow / numpy)", False, str(e))
                continue
            ids = pq.read_table(path if fmt == "parquet" else out / "slice.parquet")
            if fmt == "parquet":
                w = ids.column("weights").combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, 9)
            else:
                w = np.load(path)
            bad = [c for c in cols if not np.array_equal(ids.column(c).to_numpy(), getattr(d, c)[sel])]
            if w.shape != want_w.shape or not np.array_equal(w.view(bits), want_w):
                bad.append("weights")
            meta = pq.ParquetFile(path if fmt == "parquet" else out / "slice.parquet").metadata
            mid = [i for i in range(meta.num_columns) if meta.schema.column(i).path == "model_id"][0]
            sts = [meta.row_group(g).column(mid).statistics for g in range(meta.num_row_groups)]
            if any(st is None or not st.has_min_max for st in sts) or \
                    (min(st.min for st in sts), max(st.max for st in sts)) != (min(mids), max(mids)):
                bad.append("model_id statistics")
            self.add(f"export {fmt} reads back (pyarrow / numpy)", not bad,
                     f"{int(sel.sum())} filters of task {task!r}" + (f"; differ: {bad}" if bad else ""))
        shutil.rmtree(out, ignore_errors=True)

    def run_all(self, fixture=None):
        steps = [self.check_storage, self.check_filter_functions, self.check_layer_functions, self.check_depth_buckets,
                 self.check_pca, self.check_projection, self.check_histograms_and_drift, self.check_export]
        if fixture is not None:
            steps.append(lambda: self.check_layer_meta(fixture))
        for step in steps:
            t0 = time.time()
            try:
                step()
            except Exception as e:  # a crash in one step is a failure, the others still run
                self.add(getattr(step, "__name__", "step"), False, f"{type(e).__name__}: {e}")
            print(f"[{self.label}] {getattr(step, '__name__', 'step')} {time.time() - t0:.1f} s", flush=True)


def layer_shape(L):
    """A stored layer's weight shape, [out, in per group, kh, kw]."""
    return [L["out_channels"], L["in_channels"], L["kernel_h"], L["kernel_w"]]


def model_count_errors(d, fixture, graph=False):
    """Per model: conv tensors, 3x3 layers and filters, and the filters per kernel shape
    against the Python reading of the graph with `onnx` (fetch_models.py); with `graph`,
    also the depth (number of graph levels)."""
    bad = []
    by_name = {m["name"]: m for m in fixture["models"]}
    stored = {m["name"] for m in d.models.values()}
    if stored != set(by_name):
        bad.append(f"models got {sorted(stored)} expected {sorted(by_name)}")
    for mid, m in d.models.items():
        f = by_name.get(m["name"])
        if f is None:
            continue
        want_shapes: dict[str, int] = {}
        for L in f["layers"]:
            key = f"({L['shape'][2]}, {L['shape'][3]})"
            want_shapes[key] = want_shapes.get(key, 0) + L["shape"][0] * L["shape"][1]
        l3 = [L for L in f["layers"] if L["shape"][2:] == [3, 3]]
        want = {"conv_tensors": len(f["layers"]), "n_layers": len(l3),
                "n_filters": sum(L["shape"][0] * L["shape"][1] for L in l3),
                "kernel_shapes": want_shapes}
        got = {"conv_tensors": m["conv_tensors"], "n_layers": m["n_layers"], "n_filters": m["n_filters"],
               "kernel_shapes": json.loads(m["kernel_shapes"])}
        if graph:
            want["depth"], got["depth"] = f["depth"], m["depth"]
        for k in want:
            if got[k] != want[k]:
                bad.append(f"{m['name']}: {k} got {got[k]} expected {want[k]}")
    return bad


def fixture_levels(fixture, name):
    return next(m["conv_levels"] for m in fixture["models"] if m["name"] == name)


def _first_bad(bad, ids, g, e, what):
    if not np.asarray(bad).any():
        return ""
    i = int(np.argwhere(bad)[0][0])
    return f"{int(np.asarray(bad).sum())} differ; {what} {ids[i]}: got {np.asarray(g[i]).tolist()} expected {np.asarray(e[i]).tolist()}"


# ------------------------------------------------------------------------- building


def build_store(fdb, path: Path, precision: str, manifest: Path):
    fdb.run("init", str(path), "--precision", precision)
    fdb.run("ingest", "--store", str(path), "--manifest", str(manifest))


def synthetic_sources(zoo: Path) -> dict:
    out = {}
    for card in zoo.glob("*.toml"):
        c = tomllib.loads(card.read_text())
        out[c.get("name", card.stem)] = (zoo / f"{card.stem}.safetensors", c.get("layout", "oihw").lower())
    return out


def check_onnx_ingest(fdb, res, label: str, work: Path, fdir: Path, fixture: dict, safetensors_store: Path):
    """The real .onnx files ingested directly (filterdb's own ONNX reader): layer counts,
    shapes, graph depths, producer and weight source against fetch_models.py's oracle (the
    `onnx` package), and every weight bit-equal to the store built from the safetensors
    conversion of the same models."""
    manifest = fdir / "onnx-manifest.csv"
    with open(manifest, "w") as f:
        f.write("path,name,task,visual_category,architecture\n")
        for m in fixture["models"]:
            c = m["card_fields"]
            f.write(f'{m["onnx"]},{m["name"]},{c["task"]},{c["visual_category"]},"{c["architecture"]}"\n')
    store = work / f"store-{label}"
    try:
        if not (store / "filterdb.json").exists():
            build_store(fdb, store, "f32", manifest)
    except SqlError as e:
        res.add(label, "build store from .onnx", False, str(e))
        return
    res.add(label, "build store from .onnx", True, str(manifest))
    got, ref_store = StoreData(store), StoreData(safetensors_store)
    want = {(m["name"], L["onnx_name"]): L for m in fixture["models"] for L in m["layers"] if L["shape"][2:] == [3, 3]}
    bad = []
    for L in got.layers:
        mname = got.models[L["model_id"]]["name"]
        w = want.get((mname, L["layer_name"]))
        if w is None:
            bad.append(f"{mname}/{L['layer_name']}: not a 3x3 conv of the source graph")
        elif (L["conv_depth"], L["groups"], L["depth_rule"]) != (w["conv_depth"], w["groups"], "graph") or not math.isclose(
                L["conv_depth_norm"], w["conv_depth_norm"], abs_tol=1e-12):
            bad.append(f"{mname}/{L['layer_name']}: got {L['conv_depth']},{L['conv_depth_norm']},{L['groups']} "
                       f"expected {w['conv_depth']},{w['conv_depth_norm']},{w['groups']}")
        elif layer_shape(L) != w["shape"]:
            bad.append(f"{mname}/{L['layer_name']}: shape got {layer_shape(L)} expected {w['shape']}")
    res.add(label, "layers: shapes, graph-rule conv_depth, conv_depth_norm, groups", not bad and len(got.layers) == len(want),
            "; ".join(bad[:3]) or f"{len(got.layers)} 3x3 layers", len(got.layers))
    bad_counts = model_count_errors(got, fixture, graph=True)
    res.add(label, "models: conv tensors, 3x3 layers, filters per kernel shape, depth = graph levels", not bad_counts,
            "; ".join(bad_counts[:3]), len(got.models))
    bad_meta = []
    by_name = {m["name"]: m for m in fixture["models"]}
    for m in got.models.values():
        f = by_name.get(m["name"])
        if f is None:
            continue
        extra = json.loads(m["extra"])
        if m["source_format"] != "onnx" or extra.get("producer") != f["producer"]:
            bad_meta.append(f"{m['name']}: source_format {m['source_format']!r}, producer {extra.get('producer')!r} expected {f['producer']!r}")
        if json.loads(extra.get("opset", "{}")) != f["opsets"] or json.loads(extra.get("operator_counts", "{}")) != f["op_counts"]:
            bad_meta.append(f"{m['name']}: opsets or operator counts differ from the onnx package's")
        sources = {c["weight"]: c["weight_source"] for c in json.loads(extra.get("onnx_convs", "[]"))}
        want_src = {L["onnx_name"]: L["weight_source"] for L in f["layers"]}
        if sources != want_src:
            diff = sorted(k for k in set(sources) | set(want_src) if sources.get(k) != want_src.get(k))
            bad_meta.append(f"{m['name']}: weight sources differ for {diff[:3]}")
    exporters = ", ".join(sorted({f"{f['producer'] or '(none)'} / {L['weight_source']}s" for f in fixture["models"] for L in f["layers"]}))
    res.add(label, "models: producer, opsets, operator counts, weight source", not bad_meta,
            "; ".join(bad_meta[:3]) or exporters, len(got.models))

    def weights_by_layer(d):
        out = {}
        for (mid, li), idx in d.groups.items():
            L = d.layer_key[(mid, li)]
            # fetch_models.py prefixes the safetensors names with the graph order: conv000.
            name = re.sub(r"^conv\d{3}\.", "", L["layer_name"])
            out[(d.models[mid]["name"], name)] = d.w_stored[idx].view(np.uint32)
        return out
    a, b = weights_by_layer(got), weights_by_layer(ref_store)
    same = a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    res.add(label, "weights bit-equal to the safetensors-built store", same,
            "" if same else f"layers {sorted(set(a) ^ set(b))[:3]} or values differ", len(got.filter_id))


def check_npz_ingest(fdb, res, label: str, work: Path, fdir: Path, fixture: dict, safetensors_store: Path):
    """The safetensors conversion's arrays saved as .npz (fetch_models.py), ingested with
    the same cards: layers (names, depths, groups, shapes) and every weight bit-equal to the
    store built from the safetensors files, and each model row naming its .npz file."""
    store = work / f"store-{label}"
    try:
        if not (store / "filterdb.json").exists():
            build_store(fdb, store, "f32", fdir / "npz-manifest.csv")
    except SqlError as e:
        res.add(label, "build store from .npz", False, str(e))
        return
    res.add(label, "build store from .npz", True, str(fdir / "npz-manifest.csv"))
    got, ref_store = StoreData(store), StoreData(safetensors_store)
    keys = ("layer_name", "conv_depth", "conv_depth_norm", "depth_rule", "groups", "out_channels", "in_channels",
            "kernel_h", "kernel_w", "n_filters", "source_dtype")

    def layer_rows(d):
        return sorted((d.models[L["model_id"]]["name"], L["layer_idx"], *(L[k] for k in keys)) for L in d.layers)
    a, b = layer_rows(got), layer_rows(ref_store)
    res.add(label, "layers equal to the safetensors-built store", a == b,
            "" if a == b else f"first difference {next((x, y) for x, y in zip(a, b) if x != y) if len(a) == len(b) else (len(a), len(b))}",
            len(a))

    def weights_by_layer(d):
        # keyed by names: model ids follow the order in which the parallel ingest staged them
        return {(d.models[mid]["name"], d.layer_key[(mid, li)]["layer_name"]): d.w_stored[idx].view(np.uint32)
                for (mid, li), idx in d.groups.items()}
    wa, wb = weights_by_layer(got), weights_by_layer(ref_store)
    differ = sorted(k for k in wa.keys() | wb.keys() if k not in wa or k not in wb or not np.array_equal(wa[k], wb[k]))
    res.add(label, "weights bit-equal to the safetensors-built store", not differ,
            f"{len(differ)} layers differ, e.g. {differ[:2]}" if differ else "", len(got.filter_id))
    want = {m["name"]: m["npz_sha256"] for m in fixture["models"]}
    rows = {m["name"]: (m["source_format"], m["source_sha256"]) for m in got.models.values()}
    bad = [f"{n}: got {rows.get(n)} expected ('npz', {h[:12]}...)" for n, h in want.items() if rows.get(n) != ("npz", h)]
    res.add(label, "models: source_format npz, source_sha256 of the .npz file", not bad, "; ".join(bad[:3]), len(rows))


def main() -> int:
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    binary = os.environ.get("FILTERDB_BIN", os.path.join(target, "debug", "filterdb"))
    if not os.path.exists(binary):
        print(f"check.py: no filterdb binary at {binary} (set FILTERDB_BIN or build with cargo build -p filterdb-cli)")
        print("0 passed, 1 failed")
        return 1
    fdb = Filterdb(binary)
    res = Results()
    work = Path(os.environ.get("REFERENCE_WORK") or tempfile.mkdtemp(prefix="filterdb-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    only = os.environ.get("REFERENCE_ONLY", "")
    print(f"check.py: filterdb {binary}, scratch {work}")

    jobs = []
    if only in ("", "synthetic"):
        zoo = work / "zoo"
        if not (zoo / "manifest.csv").exists():
            # small but varied: several tasks and visual categories, sparse and random-like layers
            fdb.run("gen", str(zoo), "--models", "8", "--seed", "20220607", "--min-layers", "4",
                    "--max-layers", "10", "--max-channels", "48")
        for prec in ("f16", "f32"):
            jobs.append((f"synthetic-{prec}", prec, zoo / "manifest.csv", synthetic_sources(zoo), None))
    if only in ("", "real"):
        for spec in fetch_models.WHEELS:
            fdir = fetch_models.build_fixture(spec, fetch_models.cache_dir())
            fixture = json.loads((fdir / "fixture.json").read_text())
            sources = {m["name"]: (fdir / m["safetensors"], "oihw") for m in fixture["models"]}
            for prec in ("f16", "f32"):
                jobs.append((f"real-{spec['tag']}-{prec}", prec, fdir / "manifest.csv", sources, fixture))

    for label, prec, manifest, sources, fixture in jobs:
        store = work / f"store-{label}"
        try:
            if not (store / "filterdb.json").exists():
                build_store(fdb, store, prec, manifest)
        except SqlError as e:
            res.add(label, "build store", False, str(e))
            continue
        res.add(label, "build store", True, f"{prec}, {manifest}")
        ch = Checker(fdb, res, label, store, sources)
        print(f"[{label}] {len(ch.d.filter_id)} filters, {len(ch.d.layers)} layers, {len(ch.d.models)} models", flush=True)
        ch.run_all(fixture)
        if label.startswith("synthetic") and hasattr(ch, "sklearn_agrees"):
            print(f"[{label}] sklearn's own PCA signs satisfy the documented rule: {ch.sklearn_agrees}")
        if fixture is not None and prec == "f32":
            fdir = manifest.parent
            onnx_label = f"onnx-{fixture['tag']}-f32"
            try:
                check_onnx_ingest(fdb, res, onnx_label, work, fdir, fixture, store)
            except Exception as e:  # a crash here is a failure, not an abort
                res.add(onnx_label, "onnx ingest", False, f"{type(e).__name__}: {e}")
            npz_label = f"npz-{fixture['tag']}-f32"
            try:
                check_npz_ingest(fdb, res, npz_label, work, fdir, fixture, store)
            except Exception as e:  # a crash here is a failure, not an abort
                res.add(npz_label, "npz ingest", False, f"{type(e).__name__}: {e}")

    print()
    print(res.table())
    print()
    print(f"{res.passed()} passed, {res.failed()} failed")
    return 0 if res.failed() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
