//! `layer_degeneration(weights, out_channel, in_channel [, ratio = 0.01])`: every per-layer
//! statistic of the paper's degeneration analysis (MISSION.md section 3) from one pass
//! over a group's filters, as one struct:
//!
//! | field | the value of |
//! |---|---|
//! | `n_filters` | `count(*)` of the rows that count (see below) |
//! | `sparsity` | `layer_sparsity(weights, ratio)` |
//! | `entropy` | `variance_entropy(weights)` |
//! | `entropy_norm` | `variance_entropy_norm(weights)` |
//! | `entropy_clean` | `variance_entropy_clean(weights, ratio)` |
//! | `entropy_clean_norm` | `variance_entropy_clean_norm(weights, ratio)` |
//! | `orthogonality` | `orthogonality(weights, out_channel, in_channel)` |
//!
//! The five separate aggregates each widen the batch, keep their own copy of the layer
//! (sparsity, the clean entropies and orthogonality cannot stream) and walk it again;
//! this one keeps the layer once ([`OrthogonalityState`]: filters and channels, exact in
//! Float32 for float16/float32 input) and evaluates everything from it when the group
//! ends: the layer's largest `|w|`, the sparse filters, one sum of outer products for the
//! entropy (a second one over the non-sparse filters only when some are sparse) and the
//! Gram kernel of `orthogonality`. `filterdb analyze degeneration` runs on it.
//!
//! Rows with a NULL filter or a NULL channel are skipped (all fields see the same rows);
//! an empty group gives a NULL struct. The orthogonality rules hold: a duplicate or
//! missing `(out_channel, in_channel)` pair is an execution error naming the pair, and a
//! group with fewer than two out channels has a NULL `orthogonality`. The entropies use
//! [`Moments`] of the filters minus the group's first one (the streaming
//! `variance_entropy`'s algorithm), so they agree with the two-pass references to
//! ~1e-12 rather than bit for bit.

use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StructArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Float32Type, Float64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};

use super::layer_sparsity::{
    DEFAULT_RATIO, DOC_SECTION, ExactFloat, GroupAgg, Groups, Single, layer_sparsity_ref, passes,
    ratio_at, ratio_column, set_ratio, storage, uniform_ratio,
};
use super::orthogonality::{
    OrthogonalityState, coerce_layer_args, coerce_precision, gram_f32_arg, layer_state_fields,
    orthogonality_ref,
};
use super::variance_entropy::{ShiftedMoments, normalise, variance_entropy_ref};
use crate::common::{Moments, group_runs, sparse_threshold};

const NAME: &str = "layer_degeneration";

/// The statistics of one layer (one group).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerStats {
    /// Filters counted.
    pub n_filters: i64,
    /// Share of sparse filters.
    pub sparsity: f64,
    /// Variance entropy `H` (base 10).
    pub entropy: f64,
    /// `H / f(n)`.
    pub entropy_norm: f64,
    /// `H` of the non-sparse filters.
    pub entropy_clean: f64,
    /// `H_clean / f(n_clean)`.
    pub entropy_clean_norm: f64,
    /// Orthogonality of the out-channel vectors (`None`: fewer than two out channels).
    pub orthogonality: Option<f64>,
}

/// Scalar reference: the statistics of one layer given as `rows[out][in]` (every out
/// channel with the same number of in channels), from the references of the five
/// separate functions (`None` for an empty layer).
pub fn layer_degeneration_ref(rows: &[Vec<[f64; 9]>], ratio: f64) -> Option<LayerStats> {
    let filters: Vec<[f64; 9]> = rows.iter().flatten().copied().collect();
    let sparsity = layer_sparsity_ref(&filters, ratio)?;
    let max = filters.iter().flatten().fold(0.0f64, |m, w| m.max(w.abs()));
    let t = sparse_threshold(max, ratio);
    let clean: Vec<[f64; 9]> = filters
        .iter()
        .filter(|f| !f.iter().all(|w| w.abs() < t))
        .copied()
        .collect();
    let entropy = variance_entropy_ref(&filters);
    let entropy_clean = variance_entropy_ref(&clean);
    let vectors: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| r.iter().flatten().copied().collect())
        .collect();
    Some(LayerStats {
        n_filters: filters.len() as i64,
        sparsity,
        entropy,
        entropy_norm: normalise(entropy, filters.len() as u64),
        entropy_clean,
        entropy_clean_norm: normalise(entropy_clean, clean.len() as u64),
        orthogonality: orthogonality_ref(&vectors),
    })
}

/// `H` of the filters `rows` (9 values each) from their moments about the first one.
fn entropy_of<T: ExactFloat>(rows: &[T::Native]) -> f64 {
    if rows.len() < 9 {
        return 0.0;
    }
    let shift: [f64; 9] = std::array::from_fn(|i| T::widen(rows[i]));
    let mut m = ShiftedMoments {
        shift,
        m: Moments::default(),
    };
    T::add_moments(&mut m.m, rows, &shift);
    m.entropy().unwrap_or(0.0)
}

/// State of `layer_degeneration`: the layer's filters and channels, and its `ratio`.
#[derive(Debug)]
pub struct DegenerationState<T: ExactFloat> {
    layers: OrthogonalityState<T>,
    ratio: Vec<Option<f64>>,
}

impl<T: ExactFloat> Default for DegenerationState<T> {
    fn default() -> Self {
        Self::new(false)
    }
}

/// The `GroupsAccumulator` of `layer_degeneration`.
pub type LayerDegenerationGroupsAccumulator<T> = Groups<DegenerationState<T>>;
/// The plain `Accumulator` of `layer_degeneration`.
pub type LayerDegenerationAccumulator<T> = Single<DegenerationState<T>>;

impl<T: ExactFloat> DegenerationState<T> {
    /// An empty state; `f32_gram`: the call asked for the f32 Gram kernel.
    fn new(f32_gram: bool) -> Self {
        DegenerationState {
            layers: OrthogonalityState::named(NAME).with_f32_gram(f32_gram),
            ratio: Vec::new(),
        }
    }

    /// The statistics of group `g` (`None` when it is empty).
    fn eval_group(&self, g: usize) -> Result<Option<LayerStats>> {
        let w = self.layers.weights(g);
        let n = w.len() / 9;
        if n == 0 {
            return Ok(None);
        }
        let ratio = self.ratio[g].unwrap_or(DEFAULT_RATIO);
        // The largest |w| in the stored type (exact), then the threshold in f64 as
        // `layer_sparsity` computes it.
        let max = w.iter().fold(0.0f64, |m, &x| m.max(T::widen(x).abs()));
        let t = sparse_threshold(max, ratio);
        let is_sparse = |f: &[T::Native]| f.iter().all(|&x| T::widen(x).abs() < t);
        let sparse = w.chunks_exact(9).filter(|f| is_sparse(f)).count();
        let entropy = entropy_of::<T>(w);
        let (entropy_clean, n_clean) = if sparse == 0 {
            (entropy, n)
        } else {
            let clean: Vec<T::Native> = w
                .chunks_exact(9)
                .filter(|f| !is_sparse(f))
                .flatten()
                .copied()
                .collect();
            (entropy_of::<T>(&clean), n - sparse)
        };
        Ok(Some(LayerStats {
            n_filters: n as i64,
            sparsity: sparse as f64 / n as f64,
            entropy,
            entropy_norm: normalise(entropy, n as u64),
            entropy_clean,
            entropy_clean_norm: normalise(entropy_clean, n_clean as u64),
            orthogonality: self.layers.eval_group(g)?,
        }))
    }
}

impl<T: ExactFloat> GroupAgg for DegenerationState<T> {
    fn fresh(&self) -> Self {
        DegenerationState {
            layers: self.layers.fresh(),
            ratio: Vec::new(),
        }
    }

    fn resize(&mut self, n: usize) {
        self.layers.resize(n);
        if n > self.ratio.len() {
            self.ratio.resize(n, None);
        }
    }

    fn num_groups(&self) -> usize {
        self.ratio.len()
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let ([w, out, inp] | [w, out, inp, _] | [w, out, inp, _, _]) = values else {
            return exec_err!("{NAME}: expected 3 to 5 arguments, got {}", values.len());
        };
        // The ratio of every row that counts (the rows the layer state keeps);
        // `ratio_column` reads the argument after the first of the slice it is given.
        let ratio = ratio_column(NAME, &values[2..])?;
        let counted =
            |i: usize| !w.is_null(i) && !out.is_null(i) && !inp.is_null(i) && passes(filter, i);
        let no_nulls = filter.is_none()
            && w.null_count() == 0
            && out.null_count() == 0
            && inp.null_count() == 0;
        for (g, rows) in group_runs(groups) {
            let slot = &mut self.ratio[g];
            match ratio {
                None => {
                    if no_nulls || rows.clone().any(counted) {
                        set_ratio(NAME, slot, DEFAULT_RATIO)?;
                    }
                }
                // the usual batch: one check per run of a group
                Some(r)
                    if no_nulls && let Some(v) = uniform_ratio(NAME, Some(r), rows.clone())? =>
                {
                    set_ratio(NAME, slot, v)?;
                }
                Some(r) => {
                    for i in rows.filter(|&i| counted(i)) {
                        set_ratio(NAME, slot, ratio_at(NAME, Some(r), i)?)?;
                    }
                }
            }
        }
        self.layers.update(&values[..3], groups, filter)
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let [out, inp, w, ratio] = states else {
            return exec_err!("{NAME}: malformed state ({} columns)", states.len());
        };
        let Some(ratio) = ratio.as_primitive_opt::<Float64Type>() else {
            return exec_err!("{NAME}: malformed state ratio");
        };
        for (j, &g) in groups.iter().enumerate() {
            if ratio.is_valid(j) {
                set_ratio(NAME, &mut self.ratio[g], ratio.value(j))?;
            }
        }
        self.layers
            .merge(&[Arc::clone(out), Arc::clone(inp), Arc::clone(w)], groups)
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let stats: Vec<Option<LayerStats>> =
            range.map(|g| self.eval_group(g)).collect::<Result<_>>()?;
        let col = |f: fn(&LayerStats) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from_iter_values(
                stats.iter().map(|s| s.as_ref().map_or(0.0, f)),
            ))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                stats.iter().map(|s| s.map_or(0, |s| s.n_filters)),
            )),
            col(|s| s.sparsity),
            col(|s| s.entropy),
            col(|s| s.entropy_norm),
            col(|s| s.entropy_clean),
            col(|s| s.entropy_clean_norm),
            Arc::new(Float64Array::from(
                stats
                    .iter()
                    .map(|s| s.and_then(|s| s.orthogonality))
                    .collect::<Vec<_>>(),
            )),
        ];
        let nulls = NullBuffer::from(stats.iter().map(Option::is_some).collect::<Vec<_>>());
        Ok(Arc::new(StructArray::try_new(
            fields(),
            columns,
            Some(nulls),
        )?))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let mut s = self.layers.state(range.clone())?;
        s.push(Arc::new(Float64Array::from(self.ratio[range].to_vec())));
        Ok(s)
    }

    fn take(&mut self, emit: EmitTo) {
        self.layers.take(emit);
        let _ = emit.take_needed(&mut self.ratio);
    }

    fn size(&self) -> usize {
        self.layers.size() + self.ratio.capacity() * size_of::<Option<f64>>()
    }
}

/// The fields of the result struct.
fn fields() -> Fields {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    Fields::from(vec![
        f("n_filters", DataType::Int64, false),
        f("sparsity", DataType::Float64, false),
        f("entropy", DataType::Float64, false),
        f("entropy_norm", DataType::Float64, false),
        f("entropy_clean", DataType::Float64, false),
        f("entropy_clean_norm", DataType::Float64, false),
        f("orthogonality", DataType::Float64, true),
    ])
}

/// The `layer_degeneration` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LayerDegenerationAgg {
    signature: Signature,
}

impl Default for LayerDegenerationAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Every per-layer statistic of the degeneration analysis from one pass over a group's \
         filters (usually one layer), as a struct: n_filters (count), sparsity \
         (= layer_sparsity(weights, ratio)), entropy and entropy_norm (= variance_entropy, \
         variance_entropy_norm), entropy_clean and entropy_clean_norm \
         (= variance_entropy_clean(_norm)(weights, ratio)) and orthogonality \
         (= orthogonality(weights, out_channel, in_channel)). Faster than the five separate \
         aggregates: the layer is kept once and read once per statistic. Rows with a NULL \
         filter or channel are skipped; an empty group gives NULL; a duplicate or missing \
         (out, in) pair is an error; orthogonality is NULL below 2 out channels. \
         gram_precision as for orthogonality ('f64' by default, 'f32' for the faster \
         float32 Gram kernel).",
        "layer_degeneration(weights, out_channel, in_channel [, ratio [, gram_precision]])",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument("out_channel", "The filter's output channel (an integer).")
    .with_argument("in_channel", "The filter's input channel (an integer).")
    .with_argument(
        "ratio",
        "Sparsity threshold as a share of the group's largest |w| (default 0.01); the same for every row of a group.",
    )
    .with_argument(
        "gram_precision",
        "'f64' (default) or 'f32': the orthogonality's Gram kernel, see orthogonality.",
    )
    .with_sql_example(
        "SELECT model_id, layer_idx, d['sparsity'], d['entropy_norm'], d['orthogonality'] \
         FROM (SELECT model_id, layer_idx, layer_degeneration(weights, out_channel, in_channel) AS d \
         FROM filters GROUP BY model_id, layer_idx);",
    )
    .build()
});

impl AggregateUDFImpl for LayerDegenerationAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (w, o, i, r, p) = match arg_types {
            [w, o, i] => (w, o, i, None, None),
            [w, o, i, r] => (w, o, i, Some(r), None),
            [w, o, i, r, p] => (w, o, i, Some(r), Some(p)),
            _ => {
                return plan_err!(
                    "{NAME} expects 3 to 5 arguments (weights, out_channel, in_channel \
                     [, ratio [, gram_precision]]), got {}",
                    arg_types.len()
                );
            }
        };
        let mut out = coerce_layer_args(NAME, w, o, i)?;
        if let Some(r) = r {
            if !(r.is_numeric() || r == &DataType::Null) {
                return plan_err!("{NAME} expects ratio as a number, got {r}");
            }
            out.push(DataType::Float64);
        }
        if let Some(p) = p {
            out.push(coerce_precision(NAME, p)?);
        }
        Ok(out)
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(fields()))
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        let f = gram_f32_arg(NAME, &acc_args, 4)?;
        Ok(match storage(&acc_args) {
            DataType::Float32 => Box::new(Single::new(DegenerationState::<Float32Type>::new(f))),
            _ => Box::new(Single::new(DegenerationState::<Float64Type>::default())),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        let mut fields = layer_state_fields(&args);
        fields.push(Arc::new(Field::new(
            format_state_name(args.name, "ratio"),
            DataType::Float64,
            true,
        )));
        Ok(fields)
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let f = gram_f32_arg(NAME, &args, 4)?;
        Ok(match storage(&args) {
            DataType::Float32 => Box::new(Groups(DegenerationState::<Float32Type>::new(f))),
            _ => Box::new(Groups(DegenerationState::<Float64Type>::default())),
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

/// The singleton `layer_degeneration` UDAF.
pub fn layer_degeneration_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(LayerDegenerationAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::layer_sparsity::tests::{fsl32, fsl64};
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, close, run_all_paths};
    use datafusion::common::ScalarValue;
    use proptest::prelude::*;

    /// A layer `rows[out][in]` as (weights, out, in) rows, shuffled or in (out, in) order.
    fn rows_of(rows: &[Vec<[f64; 9]>], rng: &mut Rng, shuffle: bool) -> Vec<([f64; 9], i64, i64)> {
        let mut items: Vec<([f64; 9], i64, i64)> = Vec::new();
        for (o, r) in rows.iter().enumerate() {
            for (i, w) in r.iter().enumerate() {
                items.push((*w, o as i64, i as i64));
            }
        }
        if shuffle {
            for i in (1..items.len()).rev() {
                items.swap(i, rng.below(i + 1));
            }
        }
        items
    }

    /// A random layer: low-rank-ish filters, some sparse ones, float32-representable.
    fn random_layer(
        rng: &mut Rng,
        n_out: usize,
        n_in: usize,
        sparse_share: f64,
    ) -> Vec<Vec<[f64; 9]>> {
        let dir: [f64; 9] = std::array::from_fn(|_| rng.uniform(-1.0, 1.0));
        (0..n_out)
            .map(|_| {
                (0..n_in)
                    .map(|_| {
                        let scale = if rng.uniform(0.0, 1.0) < sparse_share {
                            1e-4
                        } else {
                            1.0
                        };
                        let a = rng.uniform(-1.0, 1.0);
                        std::array::from_fn(|k| {
                            f64::from((scale * (a * dir[k] + 0.3 * rng.uniform(-1.0, 1.0))) as f32)
                        })
                    })
                    .collect()
            })
            .collect()
    }

    fn stats_at(a: &ArrayRef, g: usize) -> Option<LayerStats> {
        let s = a.as_struct();
        if s.is_null(g) {
            return None;
        }
        let f = |k: usize| s.column(k).as_primitive::<Float64Type>().value(g);
        let o = s.column(6).as_primitive::<Float64Type>();
        Some(LayerStats {
            n_filters: s
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(g),
            sparsity: f(1),
            entropy: f(2),
            entropy_norm: f(3),
            entropy_clean: f(4),
            entropy_clean_norm: f(5),
            orthogonality: o.is_valid(g).then(|| o.value(g)),
        })
    }

    fn assert_stats_close(got: Option<LayerStats>, want: Option<LayerStats>, what: &str) {
        match (got, want) {
            (Some(g), Some(w)) => {
                assert_eq!(g.n_filters, w.n_filters, "{what}: n_filters");
                assert_eq!(g.sparsity, w.sparsity, "{what}: sparsity");
                for (name, a, b) in [
                    ("entropy", g.entropy, w.entropy),
                    ("entropy_norm", g.entropy_norm, w.entropy_norm),
                    ("entropy_clean", g.entropy_clean, w.entropy_clean),
                    (
                        "entropy_clean_norm",
                        g.entropy_clean_norm,
                        w.entropy_clean_norm,
                    ),
                ] {
                    assert!(close(a, b, 1e-10, 1e-10), "{what}: {name} {a} vs {b}");
                }
                match (g.orthogonality, w.orthogonality) {
                    (Some(a), Some(b)) => {
                        assert!(
                            close(a, b, 1e-12, 1e-12),
                            "{what}: orthogonality {a} vs {b}"
                        )
                    }
                    (a, b) => assert_eq!(a, b, "{what}: orthogonality"),
                }
            }
            (g, w) => assert_eq!(g, w, "{what}"),
        }
    }

    /// Layers as groups; returns the results of every accumulator path (checked to agree).
    fn run(
        layers: &[Vec<Vec<[f64; 9]>>],
        ratio: Option<f64>,
        f32_input: bool,
        shuffle: bool,
        seed: u64,
    ) -> Result<ArrayRef> {
        let mut rng = Rng::new(seed);
        let (mut w, mut o, mut i, mut g) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (k, l) in layers.iter().enumerate() {
            for (ww, oo, ii) in rows_of(l, &mut rng, shuffle) {
                w.push(ww);
                o.push(oo);
                i.push(ii);
                g.push(k);
            }
        }
        let weights = if f32_input {
            fsl32(&w)
        } else {
            fsl64(&w.iter().copied().map(Some).collect::<Vec<_>>())
        };
        let mut args = vec![
            Arg::Array(weights),
            Arg::Array(Arc::new(Int64Array::from(o))),
            Arg::Array(Arc::new(Int64Array::from(i))),
        ];
        if let Some(r) = ratio {
            args.push(Arg::Literal(ScalarValue::Float64(Some(r))));
        }
        let r = run_all_paths(
            &layer_degeneration_udaf(),
            &args,
            &g,
            layers.len(),
            None,
            seed,
        )?;
        assert_results_close(&r, 1e-10, 1e-12);
        Ok(r.one_pass)
    }

    #[test]
    fn matches_the_references_on_fixed_layers() {
        let mut rng = Rng::new(11);
        let layers = vec![
            random_layer(&mut rng, 6, 4, 0.0),
            random_layer(&mut rng, 5, 3, 0.4),
            random_layer(&mut rng, 1, 3, 0.0), // one out channel: NULL orthogonality
            vec![vec![[0.0; 9]; 2], vec![[0.0; 9]; 2]], // all zero: t = 1, all sparse
            vec![vec![[0.5; 9]]; 3],           // identical filters: H = 0
        ];
        for f32_input in [false, true] {
            for shuffle in [false, true] {
                for ratio in [None, Some(0.05)] {
                    let got = run(&layers, ratio, f32_input, shuffle, 3).unwrap();
                    for (g, l) in layers.iter().enumerate() {
                        let want = layer_degeneration_ref(l, ratio.unwrap_or(DEFAULT_RATIO));
                        assert_stats_close(
                            stats_at(&got, g),
                            want,
                            &format!(
                                "layer {g} f32 {f32_input} shuffled {shuffle} ratio {ratio:?}"
                            ),
                        );
                    }
                }
            }
        }
        let zero = stats_at(&run(&layers[3..4], None, true, false, 1).unwrap(), 0).unwrap();
        assert_eq!(
            (zero.sparsity, zero.entropy_clean, zero.orthogonality),
            (1.0, 0.0, Some(0.0))
        );
    }

    #[test]
    fn empty_group_is_null_and_pairs_are_checked() {
        let got = run(
            &[vec![], random_layer(&mut Rng::new(2), 2, 2, 0.0)],
            None,
            true,
            false,
            2,
        )
        .unwrap();
        assert!(got.is_null(0) && got.is_valid(1));
        let mut rows = random_layer(&mut Rng::new(3), 2, 2, 0.0);
        rows[1].pop();
        let e = run(&[rows], None, true, false, 3).unwrap_err().to_string();
        assert!(
            e.contains("layer_degeneration: missing filter (out_channel 1, in_channel 1)"),
            "{e}"
        );
    }

    #[test]
    fn ratio_must_be_constant_in_a_group() {
        let w = fsl32(&[[1.0; 9], [2.0; 9]]);
        let args = vec![
            Arg::Array(w),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 1]))),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 0]))),
            Arg::Array(Arc::new(Float64Array::from(vec![0.01, 0.02]))),
        ];
        let e = run_all_paths(&layer_degeneration_udaf(), &args, &[0, 0], 1, None, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ratio must be the same"), "{e}");
    }

    proptest! {
        /// Every field equals the reference of its separate function, through every
        /// accumulator path, for float32 and float64 input, in order or shuffled.
        #[test]
        fn every_path_matches_the_references(
            seed in 0u64..400,
            n_out in 1usize..7,
            n_in in 1usize..4,
            groups in 1usize..4,
            sparse in prop_oneof![Just(0.0), Just(0.3), Just(1.0)],
            f32_input: bool,
            shuffle: bool,
        ) {
            let mut rng = Rng::new(seed);
            let layers: Vec<_> = (0..groups).map(|_| random_layer(&mut rng, n_out, n_in, sparse)).collect();
            let got = run(&layers, Some(0.02), f32_input, shuffle, seed).unwrap();
            for (g, l) in layers.iter().enumerate() {
                assert_stats_close(stats_at(&got, g), layer_degeneration_ref(l, 0.02), &format!("group {g}"));
            }
        }
    }
}
