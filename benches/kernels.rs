//! Every filterdb SQL function (`filterdb_udf::all_scalar` / `all_aggregate`): the plain
//! scalar reference (`*_ref`, in a row loop) against the vectorised kernel or
//! `GroupsAccumulator`, on the same Arrow input, in elements per second (issue 5).
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo bench -p filterdb-benches --bench kernels
//! cargo bench -p filterdb-benches --bench kernels -- pca_fit          # one function
//! cargo bench -p filterdb-benches --bench kernels -- 'agg/.*/64g'     # a regex over the ids
//! FILTERDB_KERNELS_FILTERS=65536 cargo test -p filterdb-benches --bench kernels   # smoke test
//! ```
//!
//! Input: `FILTERDB_KERNELS_FILTERS` (default 1,048,576) deterministic synthetic filters
//! (ChaCha8, fixed seed): 64 equally large "layers", each with its own scale and template
//! plus Gaussian noise, 5 % of the filters near zero (sparse). They are cut into batches of
//! 8192 rows, as a scan delivers them, once as `FixedSizeList<Float16, 9>` (the f16 store's
//! type) and once as `FixedSizeList<Float32, 9>`; benchmark ids end in `f16` / `f32`.
//!
//! - `scalar/<function>/<type>`: `reference` reads each row of each batch element by
//!   element (f16 -> f64 one value at a time), calls the `*_ref` function and builds the
//!   same Arrow result type; `kernel` is the function's kernel as its `invoke_with_args`
//!   runs it per batch (`Filters::try_new`, which widens f16 with F16C, then the kernel;
//!   the norms through a `fn` pointer, as `FilterReduceFunc` holds them). `make_weights`
//!   takes the nine weight columns; `pca_project` a basis fitted on the data; `kl_drift`
//!   16,384 pairs of 70-bin histograms with explained-variance weights (elements = pairs);
//!   `depth_bucket` 1M relative depths as Float64 / Float32 (elements = values).
//! - `agg/<function>/<type>/<g>g`: `reference` collects each group's rows and calls the
//!   `*_ref` function per group (the `_clean` variants: the layer threshold, the non-sparse
//!   filters, then `variance_entropy_ref`); `kernel` creates the `GroupsAccumulator`
//!   through the UDAF (`create_groups_accumulator`, as DataFusion does), runs
//!   `update_batch` over every batch and `evaluate(EmitTo::All)`. `g` = 1 group, or 64
//!   groups of contiguous rows (a layer's filters are contiguous in the store).
//!   `coef_histogram_merge` merges 16,384 histograms (elements = histograms);
//!   `orthogonality` (O(n^2) in the out channels) takes a 16th of the filters, 65,536 by
//!   default: one layer of 1024 out x 64 in channels (1 group) or 64 layers of 32 x 32
//!   (64 groups); its Gram part runs on rayon's pool, the only multi-threaded kernel here.
//!   `orthogonality_f32gram` is the same call with `'f32'` (the opt-in f32 Gram kernel,
//!   checked within its 3.9e-6 bound).
//!   `layer_degeneration` runs on the same input against the references of the five
//!   statistics it returns (sparsity, the four entropies, orthogonality).
//!
//! Before the first timed `kernel` run of each benchmark, its result is checked against
//! the reference's (exactly, or within a stated tolerance), so a wrong kernel fails
//! loudly instead of looking fast. Each benchmark takes 10 samples (flat sampling) over
//! ~2 s; the whole run takes about 6 minutes on 2 cores.

use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, FixedSizeListArray, Float32Array, Float64Array,
    Int64Array, ListArray, PrimitiveArray, StringBuilder, StructArray,
};
use arrow::buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::compute::cast;
use arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Float16Type, Float32Type, Float64Type, Int64Type, Schema,
};
use criterion::measurement::WallTime;
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::function::AccumulatorArgs;
use datafusion::logical_expr::{AggregateUDF, ColumnarValue, EmitTo, GroupsAccumulator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{Column, Literal};
use half::f16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use filterdb_udf::aggregate::coef_histogram::coef_histogram_ref;
use filterdb_udf::aggregate::coef_histogram_merge::coef_histogram_merge_ref;
use filterdb_udf::aggregate::coef_range::coef_range_ref;
use filterdb_udf::aggregate::largest_filters::{largest_filters_ref, largest_filters_udaf};
use filterdb_udf::aggregate::layer_degeneration::{
    LayerStats, layer_degeneration_ref, layer_degeneration_udaf,
};
use filterdb_udf::aggregate::layer_sparsity::{DEFAULT_RATIO, layer_sparsity_ref};
use filterdb_udf::aggregate::orthogonality::orthogonality_ref;
use filterdb_udf::aggregate::pca_fit::pca_fit_ref;
use filterdb_udf::aggregate::variance_entropy::{normalise, variance_entropy_ref};
use filterdb_udf::aggregate::{
    coef_histogram::coef_histogram_udaf, coef_histogram_merge::coef_histogram_merge_udaf,
    coef_range::coef_range_udaf, layer_sparsity::layer_sparsity_udaf,
    orthogonality::orthogonality_udaf, pca_fit::pca_fit_udaf,
    variance_entropy::variance_entropy_clean_norm_udaf,
    variance_entropy::variance_entropy_clean_udaf, variance_entropy::variance_entropy_norm_udaf,
    variance_entropy::variance_entropy_udaf,
};
use filterdb_udf::common::{
    Basis, Filters, Histogram, filter_max_abs, filter_reduce_kernel, fsl_f64, sparse_threshold,
};
use filterdb_udf::scalar::depth_bucket::{
    DEPTH_BUCKETS, EDGES_F32, EDGES_F64, depth_bucket_kernel, depth_bucket_ref,
};
use filterdb_udf::scalar::kl_drift::{kl_drift_kernel, kl_drift_ref};
use filterdb_udf::scalar::l1_norm::l1_norm_ref;
use filterdb_udf::scalar::l2_norm::l2_norm_ref;
use filterdb_udf::scalar::linf_norm::linf_norm_ref;
use filterdb_udf::scalar::make_weights::{make_weights_kernel, make_weights_ref};
use filterdb_udf::scalar::pca_project::{pca_project_batch, pca_project_kernel, pca_project_ref};
use filterdb_udf::scalar::peak_scale::{peak_scale_kernel, peak_scale_ref};

/// Rows per batch (DataFusion's default batch size).
const BATCH: usize = 8192;
/// Contiguous layers of the synthetic data.
const LAYERS: usize = 64;
/// Group counts of the aggregate benchmarks.
const GROUPS: [usize; 2] = [1, 64];
/// Bins of the histograms (the paper's default).
const BINS: usize = 70;
/// Base histograms for `kl_drift` (all ordered pairs) and `coef_histogram_merge`.
const HISTS: usize = 128;
/// Histograms merged by `coef_histogram_merge`.
const MERGE_ROWS: usize = 16_384;

/// Number of filters (`FILTERDB_KERNELS_FILTERS`, default 2^20).
fn n_filters() -> usize {
    std::env::var("FILTERDB_KERNELS_FILTERS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1 << 20)
}

// ---------------------------------------------------------------------------------------
// Input data
// ---------------------------------------------------------------------------------------

/// `n` deterministic filters, row-major, in `layers` contiguous layers: per layer a scale
/// (log-uniform 0.01..0.3) and a template; a filter is `scale * (a * template + noise)`,
/// 5 % of them multiplied by 1e-3 (sparse filters for `layer_sparsity`).
fn gen_filters(n: usize, layers: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f32, 1.0).expect("normal");
    let mut out = Vec::with_capacity(9 * n);
    let per = n.div_ceil(layers.max(1));
    let mut scale = 0.0f32;
    let mut template = [0.0f32; 9];
    for i in 0..n {
        if i % per == 0 {
            scale = (rng.random_range(0.01f32.ln()..0.3f32.ln())).exp();
            template = std::array::from_fn(|_| normal.sample(&mut rng));
        }
        let a = normal.sample(&mut rng);
        let tiny = if rng.random::<f32>() < 0.05 {
            1e-3
        } else {
            1.0
        };
        for t in template {
            out.push(tiny * scale * (a * t + 0.7 * normal.sample(&mut rng)));
        }
    }
    out
}

/// `FixedSizeList<T, 9>` over `values` (9 per row), no NULLs.
fn fsl<T: ArrowPrimitiveType>(values: Vec<T::Native>, nulls: Option<NullBuffer>) -> ArrayRef {
    Arc::new(
        FixedSizeListArray::try_new(
            Arc::new(Field::new_list_field(T::DATA_TYPE, true)),
            9,
            Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(values), None)),
            nulls,
        )
        .expect("list"),
    )
}

/// The validity of `valid` (`None` when all are valid).
fn nulls_of(valid: Vec<bool>) -> Option<NullBuffer> {
    let n = NullBuffer::from(valid);
    (n.null_count() > 0).then_some(n)
}

/// The element type of a weights column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prec {
    F16,
    F32,
}

impl Prec {
    const ALL: [Prec; 2] = [Prec::F16, Prec::F32];

    fn name(self) -> &'static str {
        match self {
            Prec::F16 => "f16",
            Prec::F32 => "f32",
        }
    }

    fn list_type(self) -> DataType {
        let t = match self {
            Prec::F16 => DataType::Float16,
            Prec::F32 => DataType::Float32,
        };
        DataType::FixedSizeList(Arc::new(Field::new_list_field(t, true)), 9)
    }

    /// Batches of `FixedSizeList<_, 9>` over `flat` (9 values per filter).
    fn batches(self, flat: &[f32]) -> Vec<ArrayRef> {
        flat.chunks(BATCH * 9)
            .map(|c| match self {
                Prec::F16 => {
                    fsl::<Float16Type>(c.iter().map(|&v| f16::from_f32(v)).collect(), None)
                }
                Prec::F32 => fsl::<Float32Type>(c.to_vec(), None),
            })
            .collect()
    }

    /// Batches of nine weight columns (the store's w0..w8) over `flat`.
    fn columns(self, flat: &[f32]) -> Vec<Vec<ArrayRef>> {
        flat.chunks(BATCH * 9)
            .map(|c| {
                (0..9)
                    .map(|k| -> ArrayRef {
                        let col = c.iter().skip(k).step_by(9).copied();
                        match self {
                            Prec::F16 => Arc::new(PrimitiveArray::<Float16Type>::from_iter_values(
                                col.map(f16::from_f32),
                            )),
                            Prec::F32 => Arc::new(Float32Array::from_iter_values(col)),
                        }
                    })
                    .collect()
            })
            .collect()
    }

    fn weights(self) -> &'static [ArrayRef] {
        match self {
            Prec::F16 => &WEIGHTS_F16,
            Prec::F32 => &WEIGHTS_F32,
        }
    }
}

static FLAT: LazyLock<Vec<f32>> = LazyLock::new(|| {
    let n = n_filters();
    let t = std::time::Instant::now();
    let v = gen_filters(n, LAYERS, 0x5EED_F117);
    eprintln!(
        "kernels: {n} synthetic filters generated in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    v
});
static WEIGHTS_F16: LazyLock<Vec<ArrayRef>> = LazyLock::new(|| Prec::F16.batches(&FLAT));
static WEIGHTS_F32: LazyLock<Vec<ArrayRef>> = LazyLock::new(|| Prec::F32.batches(&FLAT));

/// Group index of every row of every batch: `groups` groups of contiguous rows.
fn group_indices(batches: &[ArrayRef], groups: usize) -> Vec<Vec<usize>> {
    let n: usize = batches.iter().map(|b| b.len()).sum();
    let mut row = 0;
    batches
        .iter()
        .map(|b| {
            (0..b.len())
                .map(|_| {
                    let g = row * groups / n;
                    row += 1;
                    g
                })
                .collect()
        })
        .collect()
}

/// 128 histograms over [-1, 1] with 70 bins: per coefficient a discretised Gaussian with
/// its own centre, width and total, so the tails hold empty bins.
static BASE_HISTS: LazyLock<Vec<Histogram>> = LazyLock::new(|| {
    let mut rng = ChaCha8Rng::seed_from_u64(0x4157);
    (0..HISTS)
        .map(|_| {
            let mut h = Histogram::new(-1.0, 1.0, BINS);
            for c in 0..9 {
                let mu = rng.random_range(-0.3..0.3);
                let sd = rng.random_range(0.05..0.4);
                let total = rng.random_range(1e3..1e6);
                for b in 0..BINS {
                    let x = -1.0 + (b as f64 + 0.5) * 2.0 / BINS as f64;
                    let d = (x - mu) / sd;
                    h.counts[c * BINS + b] = (total * (-0.5 * d * d).exp() / BINS as f64) as i64;
                }
            }
            h
        })
        .collect()
});

// ---------------------------------------------------------------------------------------
// The reference paths' row access
// ---------------------------------------------------------------------------------------

/// Element-by-element row access for the reference paths (no batch conversion).
enum RefValues<'a> {
    F16(&'a [f16]),
    F32(&'a [f32]),
    F64(&'a [f64]),
}

struct RefRows<'a> {
    list: &'a FixedSizeListArray,
    values: RefValues<'a>,
}

impl<'a> RefRows<'a> {
    fn new(a: &'a dyn Array) -> RefRows<'a> {
        let list = a.as_fixed_size_list();
        let v = list.values();
        let values = match v.data_type() {
            DataType::Float16 => RefValues::F16(v.as_primitive::<Float16Type>().values()),
            DataType::Float32 => RefValues::F32(v.as_primitive::<Float32Type>().values()),
            DataType::Float64 => RefValues::F64(v.as_primitive::<Float64Type>().values()),
            t => panic!("unexpected weights type {t}"),
        };
        RefRows { list, values }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// Row `i` as nine f64, `None` when NULL.
    fn get(&self, i: usize) -> Option<[f64; 9]> {
        if self.list.is_null(i) {
            return None;
        }
        let o = self.list.value_offset(i) as usize;
        Some(match self.values {
            RefValues::F16(v) => std::array::from_fn(|k| v[o + k].to_f64()),
            RefValues::F32(v) => std::array::from_fn(|k| f64::from(v[o + k])),
            RefValues::F64(v) => std::array::from_fn(|k| v[o + k]),
        })
    }
}

/// Every group's rows (in order), as the `*_ref` aggregates take them (each group's
/// vector allocated once, at its final size).
fn gather(batches: &[ArrayRef], groups: &[Vec<usize>], n: usize) -> GroupRows {
    let mut sizes = vec![0usize; n];
    for &g in groups.iter().flatten() {
        sizes[g] += 1;
    }
    let mut out: GroupRows = sizes.into_iter().map(Vec::with_capacity).collect();
    for (b, gi) in batches.iter().zip(groups) {
        let r = RefRows::new(b.as_ref());
        for (i, &g) in gi.iter().enumerate() {
            out[g].push(r.get(i));
        }
    }
    out
}

/// Every group's rows (`None`: a NULL filter).
type GroupRows = Vec<Vec<Option<[f64; 9]>>>;
/// A per-group reference: every group's rows -> the aggregate's result column.
type AggReference = fn(GroupRows) -> ArrayRef;
/// A per-filter reduction (the norms).
type Reduce = fn(&[f64; 9]) -> f64;

/// The non-NULL rows of a group.
fn present(rows: &[Option<[f64; 9]>]) -> Vec<[f64; 9]> {
    rows.iter().flatten().copied().collect()
}

// ---------------------------------------------------------------------------------------
// Aggregate calls
// ---------------------------------------------------------------------------------------

/// One aggregate call with its argument types (a `None` literal: a column), as the
/// planner would hand it to `create_groups_accumulator`.
struct AggCall {
    udaf: Arc<AggregateUDF>,
    schema: Schema,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    fields: Vec<FieldRef>,
    return_field: FieldRef,
}

impl AggCall {
    fn new(udaf: Arc<AggregateUDF>, args: &[(DataType, Option<ScalarValue>)]) -> AggCall {
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
        let mut fields = Vec::new();
        for (i, (t, lit)) in args.iter().enumerate() {
            let name = format!("c{i}");
            exprs.push(match lit {
                Some(s) => Arc::new(Literal::new(s.clone())),
                None => Arc::new(Column::new(&name, i)),
            });
            fields.push(Arc::new(Field::new(name, t.clone(), true)));
        }
        let return_field = udaf.return_field(&fields).expect("return field");
        AggCall {
            udaf,
            schema: Schema::new(fields.clone()),
            exprs,
            fields,
            return_field,
        }
    }

    fn groups_accumulator(&self) -> Box<dyn GroupsAccumulator> {
        let args = || AccumulatorArgs {
            return_field: Arc::clone(&self.return_field),
            schema: &self.schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: self.udaf.name(),
            is_distinct: false,
            exprs: &self.exprs,
            expr_fields: &self.fields,
        };
        assert!(self.udaf.groups_accumulator_supported(args()));
        self.udaf
            .create_groups_accumulator(args())
            .expect("accumulator")
    }

    /// `update_batch` over every batch, then `evaluate(EmitTo::All)`.
    fn run(&self, batches: &[Vec<ArrayRef>], groups: &[Vec<usize>], n: usize) -> Vec<ArrayRef> {
        let mut acc = self.groups_accumulator();
        for (b, g) in batches.iter().zip(groups) {
            acc.update_batch(b, g, None, n).expect("update_batch");
        }
        vec![acc.evaluate(EmitTo::All).expect("evaluate")]
    }
}

// ---------------------------------------------------------------------------------------
// Benchmark harness and result checks
// ---------------------------------------------------------------------------------------

fn configure(g: &mut BenchmarkGroup<'_, WallTime>, elements: usize) {
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(elements as u64));
}

/// Benchmark group `name`: `reference` then `kernel` over the input `input` builds
/// (once, on first use, so a filtered-out benchmark builds nothing); before the first
/// kernel run, `check(reference output, kernel output)`.
fn compare<I>(
    c: &mut Criterion,
    name: &str,
    elements: impl FnOnce() -> usize,
    input: impl Fn() -> I,
    reference: impl Fn(&I) -> Vec<ArrayRef>,
    kernel: impl Fn(&I) -> Vec<ArrayRef>,
    check: impl Fn(&str, &[ArrayRef], &[ArrayRef]),
) {
    let cell = OnceCell::new();
    let mut g = c.benchmark_group(name);
    configure(&mut g, elements());
    g.bench_function("reference", |b| {
        let i = cell.get_or_init(&input);
        b.iter(|| reference(black_box(i)));
    });
    let mut checked = false;
    g.bench_function("kernel", |b| {
        let i = cell.get_or_init(&input);
        if !checked {
            check(name, &reference(i), &kernel(i));
            checked = true;
        }
        b.iter(|| kernel(black_box(i)));
    });
    g.finish();
}

/// Every number of an array (lists and structs flattened, depth bucket labels as their
/// index), NULL as `None`.
fn leaves(a: &dyn Array, out: &mut Vec<Option<f64>>) {
    match a.data_type() {
        DataType::FixedSizeList(..) => leaves(a.as_fixed_size_list().values().as_ref(), out),
        DataType::List(_) => leaves(a.as_list::<i32>().values().as_ref(), out),
        DataType::Struct(_) => {
            for c in a.as_struct().columns() {
                leaves(c.as_ref(), out);
            }
        }
        DataType::Utf8 => out.extend(a.as_string::<i32>().iter().map(|s| {
            s.map(|s| {
                DEPTH_BUCKETS
                    .iter()
                    .position(|b| *b == s)
                    .map_or(-1.0, |p| p as f64)
            })
        })),
        _ => {
            let f = cast(a, &DataType::Float64).expect("cast to f64");
            out.extend(f.as_primitive::<Float64Type>().iter());
        }
    }
}

/// A check: same shape and NULLs, every number within `rtol` (relative to the larger
/// magnitude) or `atol`.
fn close(rtol: f64, atol: f64) -> impl Fn(&str, &[ArrayRef], &[ArrayRef]) + Copy {
    move |name, r, k| {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for x in r {
            leaves(x.as_ref(), &mut a);
        }
        for x in k {
            leaves(x.as_ref(), &mut b);
        }
        assert_eq!(a.len(), b.len(), "{name}: result lengths differ");
        let mut worst = 0.0f64;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            match (x, y) {
                (Some(x), Some(y)) => {
                    let d = (x - y).abs();
                    let ok =
                        d <= atol || d <= rtol * x.abs().max(y.abs()) || (x.is_nan() && y.is_nan());
                    assert!(ok, "{name}: value {i}: reference {x}, kernel {y}");
                    if x.abs().max(y.abs()) > 0.0 {
                        worst = worst.max(d / x.abs().max(y.abs()));
                    }
                }
                (None, None) => {}
                _ => panic!("{name}: value {i}: reference {x:?}, kernel {y:?}"),
            }
        }
        eprintln!(
            "{name}: kernel agrees with reference ({} values, max relative difference {worst:.1e})",
            a.len()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Scalar functions
// ---------------------------------------------------------------------------------------

fn bench_make_weights(c: &mut Criterion) {
    fn reference<T: ArrowPrimitiveType>(cols: &[ArrayRef]) -> ArrayRef {
        let cs: Vec<&PrimitiveArray<T>> = cols.iter().map(|c| c.as_primitive::<T>()).collect();
        let n = cs[0].len();
        let mut values = Vec::with_capacity(9 * n);
        let mut valid = Vec::with_capacity(n);
        for i in 0..n {
            values.extend_from_slice(&make_weights_ref(std::array::from_fn(|k| cs[k].value(i))));
            valid.push(cs.iter().all(|c| c.is_valid(i)));
        }
        fsl::<T>(values, nulls_of(valid))
    }
    fn kernel<T: ArrowPrimitiveType>(cols: &[ArrayRef]) -> ArrayRef {
        let cs: Vec<&PrimitiveArray<T>> = cols.iter().map(|c| c.as_primitive::<T>()).collect();
        Arc::new(make_weights_kernel::<T>(&cs).expect("make_weights"))
    }
    for p in Prec::ALL {
        compare(
            c,
            &format!("scalar/make_weights/{}", p.name()),
            n_filters,
            || p.columns(&FLAT),
            |batches| {
                batches
                    .iter()
                    .map(|b| match p {
                        Prec::F16 => reference::<Float16Type>(b),
                        Prec::F32 => reference::<Float32Type>(b),
                    })
                    .collect()
            },
            |batches| {
                batches
                    .iter()
                    .map(|b| match p {
                        Prec::F16 => kernel::<Float16Type>(b),
                        Prec::F32 => kernel::<Float32Type>(b),
                    })
                    .collect()
            },
            close(0.0, 0.0),
        );
    }
}

fn bench_peak_scale(c: &mut Criterion) {
    for p in Prec::ALL {
        compare(
            c,
            &format!("scalar/peak_scale/{}", p.name()),
            n_filters,
            || p.weights(),
            |batches| {
                batches
                    .iter()
                    .map(|b| {
                        let r = RefRows::new(b.as_ref());
                        let mut values = Vec::with_capacity(9 * r.len());
                        let mut valid = Vec::with_capacity(r.len());
                        for i in 0..r.len() {
                            match r.get(i) {
                                Some(x) => values.extend(peak_scale_ref(&x).map(|v| v as f32)),
                                None => values.extend([0f32; 9]),
                            }
                            valid.push(r.list.is_valid(i));
                        }
                        fsl::<Float32Type>(values, nulls_of(valid))
                    })
                    .collect()
            },
            |batches| {
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        let f = Filters::try_new("peak_scale", b.as_ref()).expect("filters");
                        Arc::new(peak_scale_kernel(&f).expect("peak_scale"))
                    })
                    .collect()
            },
            close(0.0, 0.0),
        );
    }
}

fn bench_norms(c: &mut Criterion) {
    let norms: [(&str, Reduce); 3] = [
        ("l1_norm", l1_norm_ref),
        ("l2_norm", l2_norm_ref),
        ("linf_norm", linf_norm_ref),
    ];
    for (name, reduce) in norms {
        for p in Prec::ALL {
            compare(
                c,
                &format!("scalar/{name}/{}", p.name()),
                n_filters,
                || p.weights(),
                |batches| {
                    batches
                        .iter()
                        .map(|b| -> ArrayRef {
                            let r = RefRows::new(b.as_ref());
                            let out: Float64Array =
                                (0..r.len()).map(|i| r.get(i).map(|x| reduce(&x))).collect();
                            Arc::new(out)
                        })
                        .collect()
                },
                |batches| {
                    batches
                        .iter()
                        .map(|b| -> ArrayRef {
                            let f = Filters::try_new(name, b.as_ref()).expect("filters");
                            // A `fn` pointer, as `FilterReduceFunc` calls it.
                            Arc::new(filter_reduce_kernel(&f, black_box(reduce)))
                        })
                        .collect()
                },
                close(0.0, 0.0),
            );
        }
    }
}

/// The PCA basis of the first 65,536 synthetic filters.
static BASIS: LazyLock<Basis> = LazyLock::new(|| {
    let rows: Vec<Option<[f64; 9]>> = FLAT
        .chunks_exact(9)
        .take(65_536)
        .map(|c| Some(std::array::from_fn(|k| f64::from(c[k]))))
        .collect();
    pca_fit_ref(&rows).expect("basis")
});

fn bench_pca_project(c: &mut Criterion) {
    for p in Prec::ALL {
        compare(
            c,
            &format!("scalar/pca_project/{}", p.name()),
            n_filters,
            || (p.weights(), &*BASIS),
            |(batches, basis)| {
                batches
                    .iter()
                    .map(|b| {
                        let r = RefRows::new(b.as_ref());
                        let mut values = Vec::with_capacity(9 * r.len());
                        let mut valid = Vec::with_capacity(r.len());
                        for i in 0..r.len() {
                            match r.get(i) {
                                Some(x) => values.extend(pca_project_ref(
                                    &x,
                                    &basis.mean,
                                    &basis.components,
                                )),
                                None => values.extend([0.0; 9]),
                            }
                            valid.push(r.list.is_valid(i));
                        }
                        fsl::<Float64Type>(values, nulls_of(valid))
                    })
                    .collect()
            },
            |(batches, basis)| {
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        let f = Filters::try_new("pca_project", b.as_ref()).expect("filters");
                        Arc::new(pca_project_kernel(&f, basis).expect("pca_project"))
                    })
                    .collect()
            },
            close(1e-9, 1e-12),
        );
    }
}

/// `pca_project(peak_scale(w), basis)` as the planner runs it, fused
/// (`pca_project(w, basis, true)`: widen, scale and project a chunk at a time), against
/// the two kernels one after the other, each materialising its batch.
fn bench_pca_project_scaled(c: &mut Criterion) {
    for p in Prec::ALL {
        compare(
            c,
            &format!("scalar/pca_project_scaled/{}", p.name()),
            n_filters,
            || {
                let basis = Basis::to_array(&[Some(BASIS.clone())]).expect("basis");
                let basis = ScalarValue::try_from_array(&basis, 0).expect("basis");
                (p.weights(), basis)
            },
            |(batches, _)| {
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        let f = Filters::try_new("peak_scale", b.as_ref()).expect("filters");
                        let s = peak_scale_kernel(&f).expect("peak_scale");
                        let f = Filters::try_new("pca_project", &s).expect("filters");
                        Arc::new(pca_project_kernel(&f, &BASIS).expect("pca_project"))
                    })
                    .collect()
            },
            |(batches, basis)| {
                let basis = ColumnarValue::Scalar(basis.clone());
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        Arc::new(pca_project_batch(b.as_ref(), &basis, true).expect("fused"))
                    })
                    .collect()
            },
            close(0.0, 0.0),
        );
    }
}

/// Batches of `(hist_a, hist_b, weights)`: every ordered pair of the base histograms,
/// weighted by the basis' explained-variance ratio.
fn kl_input() -> Vec<[ArrayRef; 3]> {
    let hs = &*BASE_HISTS;
    let pairs: Vec<(usize, usize)> = (0..hs.len())
        .flat_map(|i| (0..hs.len()).map(move |j| (i, j)))
        .collect();
    let w = BASIS.explained_variance_ratio;
    pairs
        .chunks(BATCH)
        .map(|ps| {
            let a: Vec<Option<Histogram>> = ps.iter().map(|&(i, _)| Some(hs[i].clone())).collect();
            let b: Vec<Option<Histogram>> = ps.iter().map(|&(_, j)| Some(hs[j].clone())).collect();
            let wv: Vec<f64> = ps.iter().flat_map(|_| w).collect();
            [
                Histogram::to_array(&a).expect("hist"),
                Histogram::to_array(&b).expect("hist"),
                fsl::<Float64Type>(wv, None),
            ]
        })
        .collect()
}

fn bench_kl_drift(c: &mut Criterion) {
    compare(
        c,
        "scalar/kl_drift/pairs",
        || HISTS * HISTS,
        kl_input,
        |batches| {
            batches
                .iter()
                .map(|[a, b, w]| -> ArrayRef {
                    let wr = RefRows::new(w.as_ref());
                    let out: Float64Array = (0..a.len())
                        .map(|i| {
                            let ha = Histogram::from_array(a.as_ref(), i).expect("hist");
                            let hb = Histogram::from_array(b.as_ref(), i).expect("hist");
                            match (ha, hb, wr.get(i)) {
                                (Some(ha), Some(hb), Some(w)) => {
                                    Some(kl_drift_ref(&ha, &hb, &w).expect("kl_drift"))
                                }
                                _ => None,
                            }
                        })
                        .collect();
                    Arc::new(out)
                })
                .collect()
        },
        |batches| {
            batches
                .iter()
                .map(|[a, b, w]| -> ArrayRef {
                    let w = Filters::try_new("kl_drift", w.as_ref()).expect("weights");
                    Arc::new(
                        kl_drift_kernel(a.as_struct(), b.as_struct(), Some(&w)).expect("kl_drift"),
                    )
                })
                .collect()
        },
        close(1e-9, 1e-12),
    );
}

fn bench_depth_bucket(c: &mut Criterion) {
    let input = |f32_input: bool| {
        move || -> Vec<ArrayRef> {
            let mut rng = ChaCha8Rng::seed_from_u64(0xDE97);
            let x: Vec<f64> = (0..n_filters())
                .map(|_| match rng.random_range(0..100) {
                    // decimal boundaries, which belong to the bucket they close
                    0..10 => f64::from(rng.random_range(0..=10)) / 10.0,
                    // out of range: NULL
                    10 => 1.5,
                    _ => rng.random::<f64>(),
                })
                .collect();
            x.chunks(BATCH)
                .map(|c| -> ArrayRef {
                    if f32_input {
                        Arc::new(Float32Array::from_iter_values(c.iter().map(|&v| v as f32)))
                    } else {
                        Arc::new(Float64Array::from_iter_values(c.iter().copied()))
                    }
                })
                .collect()
        }
    };
    for (name, f32_input) in [("f64", false), ("f32", true)] {
        compare(
            c,
            &format!("scalar/depth_bucket/{name}"),
            n_filters,
            input(f32_input),
            |batches| {
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        let mut out = StringBuilder::with_capacity(b.len(), 10 * b.len());
                        let (x, edges): (Vec<Option<f64>>, _) = if f32_input {
                            let p = b.as_primitive::<Float32Type>();
                            (p.iter().map(|v| v.map(f64::from)).collect(), &EDGES_F32)
                        } else {
                            (b.as_primitive::<Float64Type>().iter().collect(), &EDGES_F64)
                        };
                        for v in x {
                            match v.and_then(|v| depth_bucket_ref(v, edges)) {
                                Some(k) => out.append_value(DEPTH_BUCKETS[k]),
                                None => out.append_null(),
                            }
                        }
                        Arc::new(out.finish())
                    })
                    .collect()
            },
            |batches| {
                batches
                    .iter()
                    .map(|b| -> ArrayRef {
                        // as `DepthBucketFunc::invoke_with_args`: f32 widened per batch
                        let out = if f32_input {
                            let p = b.as_primitive::<Float32Type>();
                            let wide: Vec<f64> = p.values().iter().map(|&v| f64::from(v)).collect();
                            depth_bucket_kernel(&wide, p.nulls(), &EDGES_F32)
                        } else {
                            let p = b.as_primitive::<Float64Type>();
                            depth_bucket_kernel(p.values(), p.nulls(), &EDGES_F64)
                        };
                        Arc::new(out.expect("depth_bucket"))
                    })
                    .collect()
            },
            close(0.0, 0.0),
        );
    }
}

// ---------------------------------------------------------------------------------------
// Aggregate functions
// ---------------------------------------------------------------------------------------

/// Input of an aggregate benchmark over the synthetic filters: the argument arrays of
/// every batch (weights first), the group indices and the number of groups.
struct AggInput {
    weights: Vec<ArrayRef>,
    args: Vec<Vec<ArrayRef>>,
    groups: Vec<Vec<usize>>,
    n: usize,
}

impl AggInput {
    /// `extra` builds the other argument columns of a batch of `len` rows.
    fn new(p: Prec, n: usize, extra: impl Fn(usize) -> Vec<ArrayRef>) -> AggInput {
        let weights = p.weights().to_vec();
        let args = weights
            .iter()
            .map(|w| {
                let mut a = vec![Arc::clone(w)];
                a.extend(extra(w.len()));
                a
            })
            .collect();
        AggInput {
            args,
            groups: group_indices(&weights, n),
            weights,
            n,
        }
    }

    fn rows(&self) -> GroupRows {
        gather(&self.weights, &self.groups, self.n)
    }
}

/// A benchmark of an aggregate over the synthetic filters, for both types and both
/// group counts: `call_args` are the arguments after `weights` (type and literal),
/// `extra` their columns for a batch of `len` rows, `reference` the per-group result.
fn bench_agg_filters(
    c: &mut Criterion,
    name: &str,
    udaf: fn() -> Arc<AggregateUDF>,
    call_args: &[(DataType, Option<ScalarValue>)],
    extra: fn(usize) -> Vec<ArrayRef>,
    reference: AggReference,
    check: impl Fn(&str, &[ArrayRef], &[ArrayRef]) + Copy,
) {
    for p in Prec::ALL {
        let mut args = vec![(p.list_type(), None)];
        args.extend(call_args.iter().cloned());
        let call = AggCall::new(udaf(), &args);
        for g in GROUPS {
            compare(
                c,
                &format!("agg/{name}/{}/{g}g", p.name()),
                n_filters,
                || AggInput::new(p, g, extra),
                |i| vec![reference(i.rows())],
                |i| call.run(&i.args, &i.groups, i.n),
                check,
            );
        }
    }
}

fn no_extra(_: usize) -> Vec<ArrayRef> {
    vec![]
}

/// `pca_fit`: `n` equal, `mean` within 1e-9 relative, explained variances within 1e-6
/// of the largest (components are not compared: near-equal eigenvalues may swap them).
fn check_basis(name: &str, r: &[ArrayRef], k: &[ArrayRef]) {
    let (r, k) = (r[0].as_ref(), k[0].as_ref());
    assert_eq!(r.len(), k.len(), "{name}: group counts differ");
    for g in 0..r.len() {
        let (a, b) = (
            Basis::from_array(r, g).expect("basis"),
            Basis::from_array(k, g).expect("basis"),
        );
        let (Some(a), Some(b)) = (a, b) else {
            panic!("{name}: group {g}: a NULL basis");
        };
        assert_eq!(a.n, b.n, "{name}: group {g}: n");
        let scale = a.explained_variance[0].abs().max(1e-300);
        for i in 0..9 {
            assert!(
                (a.mean[i] - b.mean[i]).abs() <= 1e-9 * a.mean[i].abs().max(1e-3),
                "{name}: group {g}: mean {i}: {} vs {}",
                a.mean[i],
                b.mean[i]
            );
            assert!(
                (a.explained_variance[i] - b.explained_variance[i]).abs() <= 1e-6 * scale,
                "{name}: group {g}: explained variance {i}: {} vs {}",
                a.explained_variance[i],
                b.explained_variance[i]
            );
        }
    }
    eprintln!("{name}: kernel agrees with reference ({} bases)", r.len());
}

/// Filters `largest_filters` keeps per group (`analyze kl-matrix`'s default).
const LARGEST: usize = 16_384;

/// `largest_filters`: the same filters in the same order, bit for bit (the kernel's
/// element type widened to f64).
fn check_largest(name: &str, r: &[ArrayRef], k: &[ArrayRef]) {
    let rows = |a: &ArrayRef| -> Vec<Option<Vec<[f64; 9]>>> {
        let l = a.as_list::<i32>();
        (0..l.len())
            .map(|g| {
                (!l.is_null(g)).then(|| {
                    let v = l.value(g);
                    let f = Filters::try_new(name, v.as_ref()).expect("filters");
                    (0..f.len()).map(|i| f.get(i)).collect()
                })
            })
            .collect()
    };
    assert_eq!(rows(&r[0]), rows(&k[0]), "{name}: kept filters differ");
    eprintln!("{name}: kernel agrees with reference");
}

/// The shared histogram range of the synthetic filters: `[-m, m]`, `m` = largest |w|.
static RANGE: LazyLock<f64> =
    LazyLock::new(|| FLAT.iter().fold(0.0f64, |m, v| m.max(f64::from(v.abs()))));

fn bench_aggregates(c: &mut Criterion) {
    bench_agg_filters(
        c,
        "pca_fit",
        pca_fit_udaf,
        &[],
        no_extra,
        |rows| {
            Basis::to_array(&rows.iter().map(|r| pca_fit_ref(r)).collect::<Vec<_>>())
                .expect("basis")
        },
        check_basis,
    );

    bench_agg_filters(
        c,
        "coef_histogram",
        coef_histogram_udaf,
        &[
            (DataType::Float64, Some(ScalarValue::Float64(Some(-*RANGE)))),
            (DataType::Float64, Some(ScalarValue::Float64(Some(*RANGE)))),
            (DataType::Int64, Some(ScalarValue::Int64(Some(BINS as i64)))),
        ],
        |len| {
            vec![
                Arc::new(Float64Array::from(vec![-*RANGE; len])),
                Arc::new(Float64Array::from(vec![*RANGE; len])),
                Arc::new(Int64Array::from(vec![BINS as i64; len])),
            ]
        },
        |rows| {
            let hs: Vec<Option<Histogram>> = rows
                .iter()
                .map(|r| Some(coef_histogram_ref(r, -*RANGE, *RANGE, BINS)))
                .collect();
            Histogram::to_array(&hs).expect("hist")
        },
        close(0.0, 0.0),
    );

    bench_agg_filters(
        c,
        "coef_range",
        coef_range_udaf,
        &[],
        no_extra,
        |rows| {
            let r: Vec<Option<(f64, f64)>> = rows.iter().map(|r| coef_range_ref(r)).collect();
            let fields = Fields::from(vec![
                Field::new("min", DataType::Float64, true),
                Field::new("max", DataType::Float64, true),
            ]);
            let min: Float64Array = r.iter().map(|x| x.map(|x| x.0)).collect();
            let max: Float64Array = r.iter().map(|x| x.map(|x| x.1)).collect();
            Arc::new(StructArray::new(
                fields,
                vec![Arc::new(min), Arc::new(max)],
                None,
            ))
        },
        close(0.0, 0.0),
    );

    bench_agg_filters(
        c,
        "largest_filters",
        largest_filters_udaf,
        &[(
            DataType::Int64,
            Some(ScalarValue::Int64(Some(LARGEST as i64))),
        )],
        |len| vec![Arc::new(Int64Array::from(vec![LARGEST as i64; len]))],
        |rows| {
            let tops: Vec<Option<Vec<[f64; 9]>>> = rows
                .iter()
                .map(|r| largest_filters_ref(r, LARGEST))
                .collect();
            let values: Vec<f64> = tops.iter().flatten().flatten().flatten().copied().collect();
            let fsl = fsl_f64(9, values, None).expect("filters");
            let nulls = NullBuffer::from(tops.iter().map(Option::is_some).collect::<Vec<_>>());
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(fsl.data_type().clone(), true)),
                OffsetBuffer::from_lengths(tops.iter().map(|t| t.as_ref().map_or(0, Vec::len))),
                Arc::new(fsl),
                Some(nulls),
            ))
        },
        check_largest,
    );

    bench_agg_filters(
        c,
        "layer_sparsity",
        layer_sparsity_udaf,
        &[],
        no_extra,
        |rows| {
            let out: Float64Array = rows
                .iter()
                .map(|r| layer_sparsity_ref(&present(r), DEFAULT_RATIO))
                .collect();
            Arc::new(out)
        },
        close(0.0, 0.0),
    );

    bench_agg_filters(
        c,
        "variance_entropy",
        variance_entropy_udaf,
        &[],
        no_extra,
        |rows| {
            let out: Float64Array = rows
                .iter()
                .map(|r| {
                    let x = present(r);
                    (!x.is_empty()).then(|| variance_entropy_ref(&x))
                })
                .collect();
            Arc::new(out)
        },
        close(1e-6, 1e-9),
    );

    bench_agg_filters(
        c,
        "variance_entropy_norm",
        variance_entropy_norm_udaf,
        &[],
        no_extra,
        |rows| {
            let out: Float64Array = rows
                .iter()
                .map(|r| {
                    let x = present(r);
                    (!x.is_empty()).then(|| normalise(variance_entropy_ref(&x), x.len() as u64))
                })
                .collect();
            Arc::new(out)
        },
        close(1e-6, 1e-9),
    );

    for (name, udaf, norm) in [
        (
            "variance_entropy_clean",
            variance_entropy_clean_udaf as fn() -> Arc<AggregateUDF>,
            false,
        ),
        (
            "variance_entropy_clean_norm",
            variance_entropy_clean_norm_udaf,
            true,
        ),
    ] {
        let reference: AggReference = if norm {
            |rows| clean_reference(&rows, true)
        } else {
            |rows| clean_reference(&rows, false)
        };
        bench_agg_filters(c, name, udaf, &[], no_extra, reference, close(1e-6, 1e-9));
    }

    bench_coef_histogram_merge(c);
    bench_orthogonality(c);
    bench_layer_degeneration(c);
}

/// `variance_entropy_clean(_norm)` by its definition: the group's threshold, its
/// non-sparse filters, their entropy (normalised by their count).
fn clean_reference(rows: &[Vec<Option<[f64; 9]>>], norm: bool) -> ArrayRef {
    let out: Float64Array = rows
        .iter()
        .map(|r| {
            let x = present(r);
            if x.is_empty() {
                return None;
            }
            let max = x.iter().fold(0.0f64, |m, f| m.max(filter_max_abs(f)));
            let t = sparse_threshold(max, DEFAULT_RATIO);
            let clean: Vec<[f64; 9]> = x
                .into_iter()
                .filter(|f| !f.iter().all(|w| w.abs() < t))
                .collect();
            let h = variance_entropy_ref(&clean);
            Some(if norm {
                normalise(h, clean.len() as u64)
            } else {
                h
            })
        })
        .collect();
    Arc::new(out)
}

fn bench_coef_histogram_merge(c: &mut Criterion) {
    let call = AggCall::new(
        coef_histogram_merge_udaf(),
        &[(Histogram::data_type(), None)],
    );
    for g in GROUPS {
        compare(
            c,
            &format!("agg/coef_histogram_merge/hist/{g}g"),
            || MERGE_ROWS,
            || {
                let hs: Vec<Option<Histogram>> = (0..MERGE_ROWS)
                    .map(|i| Some(BASE_HISTS[i % HISTS].clone()))
                    .collect();
                let batches: Vec<ArrayRef> = hs
                    .chunks(BATCH)
                    .map(|c| Histogram::to_array(c).expect("hist"))
                    .collect();
                let groups = group_indices(&batches, g);
                (batches, groups)
            },
            |(batches, groups)| {
                let mut per: Vec<Vec<Option<Histogram>>> = vec![Vec::new(); g];
                for (b, gi) in batches.iter().zip(groups) {
                    for (i, &k) in gi.iter().enumerate() {
                        per[k].push(Histogram::from_array(b.as_ref(), i).expect("hist"));
                    }
                }
                let out: Vec<Option<Histogram>> =
                    per.iter().map(|h| coef_histogram_merge_ref(h)).collect();
                vec![Histogram::to_array(&out).expect("hist")]
            },
            |(batches, groups)| {
                let args: Vec<Vec<ArrayRef>> =
                    batches.iter().map(|b| vec![Arc::clone(b)]).collect();
                call.run(&args, groups, g)
            },
            close(0.0, 0.0),
        );
    }
}

/// Filters of the `orthogonality` benchmarks: a 16th of the others, at least 4096
/// (65,536 by default).
fn ortho_filters() -> usize {
    (n_filters() / 16).max(4096) / 2048 * 2048
}

/// `orthogonality` input: [`ortho_filters`] filters in `groups` layers of `out x in`
/// channels, 64 in channels for one group (1024 x 64 by default) and 32 for 64 groups
/// (32 x 32), rows in (layer, out, in) order.
fn ortho_input(p: Prec, groups: usize) -> AggInput {
    let n = ortho_filters();
    let n_in = if groups == 1 { 64 } else { 32 };
    let n_out = n / groups / n_in;
    assert_eq!(n, groups * n_out * n_in);
    let flat = gen_filters(n, groups, 0x0D7A);
    let weights = p.batches(&flat);
    let mut row = 0usize;
    let args = weights
        .iter()
        .map(|w| {
            let (mut outs, mut ins) = (Vec::new(), Vec::new());
            for _ in 0..w.len() {
                let r = row % (n_out * n_in);
                outs.push((r / n_in) as i64);
                ins.push((r % n_in) as i64);
                row += 1;
            }
            vec![
                Arc::clone(w),
                Arc::new(Int64Array::from(outs)) as ArrayRef,
                Arc::new(Int64Array::from(ins)),
            ]
        })
        .collect();
    AggInput {
        groups: group_indices(&weights, groups),
        weights,
        args,
        n: groups,
    }
}

fn bench_orthogonality(c: &mut Criterion) {
    // the default (float64 accumulation) and the opt-in f32 Gram kernel ('f32'), the
    // latter within its worst-case bound of the reference (gram32.rs: gamma_65 = 3.9e-6)
    for (gram, suffix, atol) in [("f64", "", 1e-12), ("f32", "_f32gram", 3.9e-6)] {
        for p in Prec::ALL {
            let call = AggCall::new(
                orthogonality_udaf(),
                &[
                    (p.list_type(), None),
                    (DataType::Int64, None),
                    (DataType::Int64, None),
                    (DataType::Utf8, Some(ScalarValue::Utf8(Some(gram.into())))),
                ],
            );
            for g in GROUPS {
                compare(
                    c,
                    &format!("agg/orthogonality{suffix}/{}/{g}g", p.name()),
                    ortho_filters,
                    || ortho_input(p, g),
                    |i| {
                        let out: Float64Array = layers_of(i)
                            .iter()
                            .map(|l| {
                                let rows: Vec<Vec<f64>> = l
                                    .iter()
                                    .map(|r| r.iter().flatten().copied().collect())
                                    .collect();
                                orthogonality_ref(&rows)
                            })
                            .collect();
                        vec![Arc::new(out) as ArrayRef]
                    },
                    |i| call.run(&i.args, &i.groups, i.n),
                    close(1e-9, atol),
                );
            }
        }
    }
}

/// Each group of an `orthogonality`-shaped input as `rows[out][in]` (sorted by channel).
fn layers_of(i: &AggInput) -> Vec<Vec<Vec<[f64; 9]>>> {
    let mut per: Vec<Vec<(i64, i64, [f64; 9])>> = vec![Vec::new(); i.n];
    for (args, gi) in i.args.iter().zip(&i.groups) {
        let r = RefRows::new(args[0].as_ref());
        let o = args[1].as_primitive::<Int64Type>();
        let n = args[2].as_primitive::<Int64Type>();
        for (k, &g) in gi.iter().enumerate() {
            if let Some(x) = r.get(k) {
                per[g].push((o.value(k), n.value(k), x));
            }
        }
    }
    per.into_iter()
        .map(|mut fs| {
            fs.sort_unstable_by_key(|&(o, n, _)| (o, n));
            let mut rows: Vec<Vec<[f64; 9]>> = Vec::new();
            let mut last = None;
            for (o, _, x) in fs {
                if last != Some(o) {
                    rows.push(Vec::new());
                    last = Some(o);
                }
                rows.last_mut().expect("row").push(x);
            }
            rows
        })
        .collect()
}

/// `layer_degeneration` (every degeneration statistic of a layer in one aggregate) on the
/// `orthogonality` input, against the five references it stands for.
fn bench_layer_degeneration(c: &mut Criterion) {
    for p in Prec::ALL {
        let call = AggCall::new(
            layer_degeneration_udaf(),
            &[
                (p.list_type(), None),
                (DataType::Int64, None),
                (DataType::Int64, None),
            ],
        );
        for g in GROUPS {
            compare(
                c,
                &format!("agg/layer_degeneration/{}/{g}g", p.name()),
                ortho_filters,
                || ortho_input(p, g),
                |i| {
                    let stats: Vec<LayerStats> = layers_of(i)
                        .iter()
                        .map(|l| layer_degeneration_ref(l, 0.01).expect("a layer"))
                        .collect();
                    let f = |v: fn(&LayerStats) -> f64| -> ArrayRef {
                        Arc::new(Float64Array::from_iter_values(stats.iter().map(v)))
                    };
                    vec![
                        Arc::new(Int64Array::from_iter_values(
                            stats.iter().map(|s| s.n_filters),
                        )) as ArrayRef,
                        f(|s| s.sparsity),
                        f(|s| s.entropy),
                        f(|s| s.entropy_norm),
                        f(|s| s.entropy_clean),
                        f(|s| s.entropy_clean_norm),
                        Arc::new(Float64Array::from(
                            stats.iter().map(|s| s.orthogonality).collect::<Vec<_>>(),
                        )),
                    ]
                },
                |i| {
                    // the struct's fields, in the reference's layout
                    let out = call.run(&i.args, &i.groups, i.n);
                    out[0].as_struct().columns().to_vec()
                },
                close(1e-9, 1e-12),
            );
        }
    }
}

fn bench_scalars(c: &mut Criterion) {
    bench_make_weights(c);
    bench_peak_scale(c);
    bench_norms(c);
    bench_pca_project(c);
    bench_pca_project_scaled(c);
    bench_kl_drift(c);
    bench_depth_bucket(c);
}

/// No plots and 10,000 bootstrap resamples (criterion's defaults, plots and 100,000,
/// took longer than the measurements of this many benchmarks).
fn config() -> Criterion {
    Criterion::default().without_plots().nresamples(10_000)
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_scalars, bench_aggregates
}
criterion_main!(benches);
