//! `orthogonality(weights, out_channel, in_channel)`: how orthogonal the out-channel
//! vectors of one layer are, MISSION.md section 3 "Orthogonality".
//!
//! Rows: one vector per out channel — its in-channel kernels (9 weights each) concatenated
//! in ascending `in_channel` order, length `n_in * 9` — each L2-normalised (a zero row is
//! left as is); `W` = those rows, `n` = number of out channels;
//! `orthogonality = 1 - sum_ij |(W W^T - I)_ij| / (n (n - 1))` (Float64; 1 for an
//! orthonormal set; the diagonal counts, so a zero row adds 1 to the sum).
//!
//! Every out channel must have exactly one filter for every in channel of the group:
//! a duplicate `(out_channel, in_channel)` or a missing pair is an execution error naming
//! the pair. Rows with a NULL filter or NULL channel are skipped. A group with fewer than
//! two out channels gives NULL (the formula divides by `n (n - 1)`), as does an empty one.
//!
//! State (exact): per group, every filter with its two channels (`List<Int64>` x 2 and
//! `List<Float32|Float64>` of 9 weights per filter; Float32 for float16/float32 input):
//! `O(filters)` memory, reported by `size()`, spillable. The Gram matrix costs
//! `O(n^2 * n_in * 9)` at evaluation.

use std::mem::size_of;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float32Type, Float64Type, Int64Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, DocumentationBuilder, EmitTo,
    GroupsAccumulator, Signature, Volatility,
};

use super::layer_sparsity::{
    DOC_SECTION, ExactFloat, GroupAgg, Groups, Single, exact_storage_type, list_of, list_type,
    passes,
};
use crate::common::{Filters, coerce_weights};

const NAME: &str = "orthogonality";

/// Scalar reference: orthogonality of the out-channel vectors `rows` (equal lengths);
/// `None` for fewer than two rows.
pub fn orthogonality_ref(rows: &[Vec<f64>]) -> Option<f64> {
    let n = rows.len();
    if n < 2 {
        return None;
    }
    let unit: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                r.iter().map(|v| v / norm).collect()
            } else {
                r.clone()
            }
        })
        .collect();
    let mut s = 0.0;
    for i in 0..n {
        for j in 0..n {
            let g: f64 = unit[i].iter().zip(&unit[j]).map(|(a, b)| a * b).sum();
            s += (g - if i == j { 1.0 } else { 0.0 }).abs();
        }
    }
    Some(1.0 - s / (n * (n - 1)) as f64)
}

/// Vectorised kernel: `rows` is `n` row-major vectors of length `d`. Normalises them and
/// forms the Gram matrix `W W^T` by blocked matrix products (nalgebra's SIMD `gemm`),
/// only the upper triangle (the matrix is symmetric), then sums `|G - I|`; same value
/// as [`orthogonality_ref`]. Blocks of rows keep memory at most ~128 MiB whatever `n`
/// (a layer of 87 840 one-input filters would need 62 GB as one matrix).
pub fn orthogonality_kernel(rows: &mut [f64], n: usize, d: usize) -> Option<f64> {
    orthogonality_blocked(rows, n, d, 16_777_216)
}

/// [`orthogonality_kernel`] with Gram blocks of at most `max_entries` values.
fn orthogonality_blocked(rows: &mut [f64], n: usize, d: usize, max_entries: usize) -> Option<f64> {
    if n < 2 || rows.len() != n * d {
        return None;
    }
    for r in rows.chunks_exact_mut(d) {
        let norm = r.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            for v in r.iter_mut() {
                *v /= norm;
            }
        }
    }
    // nalgebra is column-major: the d x n matrix over `rows` has the vectors as columns,
    // so G = M^T M; a block of b columns A gives the rows A^T M[:, c0..] of G.
    let m = nalgebra::DMatrixView::from_slice(rows, d, n);
    let block = (max_entries / n).clamp(1, n);
    let mut s = 0.0;
    for c0 in (0..n).step_by(block) {
        let b = block.min(n - c0);
        let a = m.columns(c0, b);
        let right = m.columns(c0, n - c0);
        let g = a.transpose() * right; // b x (n - c0); entry (i, j) is G[c0 + i][c0 + j]
        for j in 0..n - c0 {
            for i in 0..b.min(j + 1) {
                let v = g[(i, j)];
                s += if i == j {
                    (v - 1.0).abs()
                } else {
                    2.0 * v.abs()
                };
            }
        }
    }
    Some(1.0 - s / (n * (n - 1)) as f64)
}

/// The filters of one group, with their channels.
#[derive(Debug, Default)]
struct Layer<N> {
    out: Vec<i64>,
    inp: Vec<i64>,
    w: Vec<N>,
}

impl<N> Layer<N> {
    fn bytes(&self) -> usize {
        (self.out.capacity() + self.inp.capacity()) * size_of::<i64>()
            + self.w.capacity() * size_of::<N>()
    }
}

/// Exact state of `orthogonality`: per group, every filter and its channels.
#[derive(Debug)]
pub struct OrthogonalityState<T: ExactFloat> {
    groups: Vec<Layer<T::Native>>,
    bytes: usize,
}

impl<T: ExactFloat> Default for OrthogonalityState<T> {
    fn default() -> Self {
        OrthogonalityState {
            groups: Vec::new(),
            bytes: 0,
        }
    }
}

/// The `GroupsAccumulator` of `orthogonality`.
pub type OrthogonalityGroupsAccumulator<T> = Groups<OrthogonalityState<T>>;
/// The plain `Accumulator` of `orthogonality`.
pub type OrthogonalityAccumulator<T> = Single<OrthogonalityState<T>>;

impl<T: ExactFloat> OrthogonalityState<T> {
    fn push(&mut self, g: usize, out: i64, inp: i64, w: &[T::Native]) {
        let l = &mut self.groups[g];
        let before = l.bytes();
        l.out.push(out);
        l.inp.push(inp);
        l.w.extend_from_slice(w);
        self.bytes += l.bytes() - before;
    }

    fn eval_group(&self, g: usize) -> Result<Option<f64>> {
        let l = &self.groups[g];
        let k = l.out.len();
        if k == 0 {
            return Ok(None);
        }
        let mut idx: Vec<usize> = (0..k).collect();
        idx.sort_unstable_by_key(|&i| (l.out[i], l.inp[i]));
        for p in idx.windows(2) {
            if (l.out[p[0]], l.inp[p[0]]) == (l.out[p[1]], l.inp[p[1]]) {
                return exec_err!(
                    "{NAME}: duplicate filter (out_channel {}, in_channel {}) in one group",
                    l.out[p[0]],
                    l.inp[p[0]]
                );
            }
        }
        let mut ins: Vec<i64> = l.inp.clone();
        ins.sort_unstable();
        ins.dedup();
        let n_in = ins.len();
        // Sorted by (out, in) with no duplicates: complete iff each out channel's run is
        // exactly `ins`.
        let mut rows: Vec<f64> = Vec::with_capacity(k * 9);
        let mut n_out = 0;
        let mut start = 0;
        while start < k {
            let o = l.out[idx[start]];
            let mut end = start;
            while end < k && l.out[idx[end]] == o {
                end += 1;
            }
            if end - start != n_in
                || idx[start..end]
                    .iter()
                    .zip(&ins)
                    .any(|(&i, &c)| l.inp[i] != c)
            {
                let have: Vec<i64> = idx[start..end].iter().map(|&i| l.inp[i]).collect();
                let missing = ins
                    .iter()
                    .find(|c| !have.contains(c))
                    .copied()
                    .unwrap_or(-1);
                return exec_err!(
                    "{NAME}: missing filter (out_channel {o}, in_channel {missing}): every out \
                     channel needs one filter per in channel of the group"
                );
            }
            for &i in &idx[start..end] {
                rows.extend(l.w[i * 9..i * 9 + 9].iter().map(|v| T::widen(*v)));
            }
            n_out += 1;
            start = end;
        }
        Ok(orthogonality_kernel(&mut rows, n_out, n_in * 9))
    }
}

impl<T: ExactFloat> GroupAgg for OrthogonalityState<T> {
    fn fresh(&self) -> Self {
        Self::default()
    }

    fn resize(&mut self, n: usize) {
        if n > self.groups.len() {
            self.groups.resize_with(n, Layer::default);
        }
    }

    fn num_groups(&self) -> usize {
        self.groups.len()
    }

    fn update(
        &mut self,
        values: &[ArrayRef],
        groups: &[usize],
        filter: Option<&BooleanArray>,
    ) -> Result<()> {
        let [w, out, inp] = values else {
            return exec_err!("{NAME}: expected 3 arguments, got {}", values.len());
        };
        let f = Filters::try_new(NAME, w.as_ref())?;
        let (Some(out), Some(inp)) = (
            out.as_primitive_opt::<Int64Type>(),
            inp.as_primitive_opt::<Int64Type>(),
        ) else {
            return exec_err!("{NAME}: channels must be Int64");
        };
        for (i, &g) in groups.iter().enumerate() {
            if f.is_null(i) || out.is_null(i) || inp.is_null(i) || !passes(filter, i) {
                continue;
            }
            let x = f.get(i);
            let n: [T::Native; 9] = std::array::from_fn(|k| T::narrow(x[k]));
            self.push(g, out.value(i), inp.value(i), &n);
        }
        Ok(())
    }

    fn merge(&mut self, states: &[ArrayRef], groups: &[usize]) -> Result<()> {
        let [out, inp, w] = states else {
            return exec_err!("{NAME}: malformed state");
        };
        let (Some(out), Some(inp), Some(w)) = (
            out.as_list_opt::<i32>(),
            inp.as_list_opt::<i32>(),
            w.as_list_opt::<i32>(),
        ) else {
            return exec_err!("{NAME}: malformed state");
        };
        let (Some(ov), Some(iv), Some(wv)) = (
            out.values().as_primitive_opt::<Int64Type>(),
            inp.values().as_primitive_opt::<Int64Type>(),
            w.values().as_primitive_opt::<T>(),
        ) else {
            return exec_err!("{NAME}: malformed state values");
        };
        let (ov, iv, wv) = (ov.values(), iv.values(), wv.values());
        let (oo, wo) = (out.value_offsets(), w.value_offsets());
        for (j, &g) in groups.iter().enumerate() {
            if out.is_null(j) {
                continue;
            }
            let (a, b) = (oo[j] as usize, oo[j + 1] as usize);
            let (c, d) = (wo[j] as usize, wo[j + 1] as usize);
            if d - c != 9 * (b - a) || inp.value_length(j) as usize != b - a {
                return exec_err!("{NAME}: malformed state (lengths)");
            }
            let io = inp.value_offsets()[j] as usize;
            for r in 0..b - a {
                self.push(g, ov[a + r], iv[io + r], &wv[c + 9 * r..c + 9 * r + 9]);
            }
        }
        Ok(())
    }

    fn evaluate(&self, range: Range<usize>) -> Result<ArrayRef> {
        let out: Vec<Option<f64>> = range.map(|g| self.eval_group(g)).collect::<Result<_>>()?;
        Ok(Arc::new(Float64Array::from(out)))
    }

    fn state(&self, range: Range<usize>) -> Result<Vec<ArrayRef>> {
        let g = &self.groups[range];
        let outs: Vec<Vec<i64>> = g.iter().map(|l| l.out.clone()).collect();
        let ins: Vec<Vec<i64>> = g.iter().map(|l| l.inp.clone()).collect();
        let ws: Vec<Vec<T::Native>> = g.iter().map(|l| l.w.clone()).collect();
        Ok(vec![
            list_of::<Int64Type>(&outs)?,
            list_of::<Int64Type>(&ins)?,
            list_of::<T>(&ws)?,
        ])
    }

    fn take(&mut self, emit: EmitTo) {
        let gone = emit.take_needed(&mut self.groups);
        self.bytes -= gone.iter().map(Layer::bytes).sum::<usize>();
    }

    fn size(&self) -> usize {
        self.bytes + self.groups.capacity() * size_of::<Layer<T::Native>>()
    }
}

/// The `orthogonality` aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct OrthogonalityAgg {
    signature: Signature,
}

impl Default for OrthogonalityAgg {
    fn default() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

static DOC: LazyLock<Documentation> = LazyLock::new(|| {
    DocumentationBuilder::new_with_details(
        DOC_SECTION,
        "Orthogonality of one layer's out-channel vectors. Each out channel's vector is its \
         in-channel kernels concatenated in ascending in_channel order (length n_in * 9), \
         L2-normalised (zero rows left as is); with W their matrix and n the number of out \
         channels: 1 - sum |W W^T - I| / (n (n - 1)) (1 = orthonormal). Every out channel needs \
         exactly one filter per in channel of the group (a duplicate or missing (out, in) pair \
         is an error); rows with NULLs are skipped; fewer than 2 out channels give NULL. \
         Exact: the state keeps the group's filters.",
        "orthogonality(weights, out_channel, in_channel)",
    )
    .with_argument(
        "weights",
        "A filter: FixedSizeList<Float16|Float32|Float64, 9> (other lists of 9 numbers are cast to Float64).",
    )
    .with_argument("out_channel", "The filter's output channel (an integer).")
    .with_argument("in_channel", "The filter's input channel (an integer).")
    .with_sql_example(
        "SELECT model_id, layer_name, orthogonality(weights, out_channel, in_channel) \
         FROM filters GROUP BY model_id, layer_name;",
    )
    .build()
});

impl AggregateUDFImpl for OrthogonalityAgg {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [w, o, i] = arg_types else {
            return plan_err!(
                "{NAME} expects 3 arguments (weights, out_channel, in_channel), got {}",
                arg_types.len()
            );
        };
        for (what, t) in [("out_channel", o), ("in_channel", i)] {
            if !(t.is_integer() || t == &DataType::Null) {
                return plan_err!("{NAME} expects {what} as an integer, got {t}");
            }
        }
        Ok(vec![
            coerce_weights(NAME, w)?,
            DataType::Int64,
            DataType::Int64,
        ])
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs<'_>) -> Result<Box<dyn Accumulator>> {
        Ok(match storage(&acc_args) {
            DataType::Float32 => {
                Box::new(Single::new(OrthogonalityState::<Float32Type>::default()))
            }
            _ => Box::new(Single::new(OrthogonalityState::<Float64Type>::default())),
        })
    }

    fn state_fields(&self, args: StateFieldsArgs<'_>) -> Result<Vec<FieldRef>> {
        let t = args
            .input_fields
            .first()
            .map_or(DataType::Float64, |f| exact_storage_type(f.data_type()));
        let f = |what: &str, t: DataType| {
            Arc::new(Field::new(format_state_name(args.name, what), t, true))
        };
        Ok(vec![
            f("out_channel", list_type(DataType::Int64)),
            f("in_channel", list_type(DataType::Int64)),
            f("weights", list_type(t)),
        ])
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs<'_>) -> bool {
        true
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs<'_>,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(match storage(&args) {
            DataType::Float32 => Box::new(Groups(OrthogonalityState::<Float32Type>::default())),
            _ => Box::new(Groups(OrthogonalityState::<Float64Type>::default())),
        })
    }

    fn documentation(&self) -> Option<&Documentation> {
        Some(&DOC)
    }
}

fn storage(args: &AccumulatorArgs<'_>) -> DataType {
    args.expr_fields
        .first()
        .map_or(DataType::Float64, |f| exact_storage_type(f.data_type()))
}

/// The singleton `orthogonality` UDAF.
pub fn orthogonality_udaf() -> Arc<AggregateUDF> {
    static UDAF: LazyLock<Arc<AggregateUDF>> =
        LazyLock::new(|| Arc::new(AggregateUDF::from(OrthogonalityAgg::default())));
    Arc::clone(&UDAF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::layer_sparsity::tests::{fsl32, fsl64};
    use crate::aggregate::testing::{Arg, Rng, assert_results_close, run_all_paths};
    use arrow::array::Int64Array;
    use proptest::prelude::*;

    fn f64_at(a: &ArrayRef, i: usize) -> Option<f64> {
        let a = a.as_primitive::<Float64Type>();
        a.is_valid(i).then(|| a.value(i))
    }

    /// A layer as (weights, out, in) columns from `rows[out][in]`, rows shuffled.
    fn layer(rows: &[Vec<[f64; 9]>], rng: &mut Rng) -> (Vec<[f64; 9]>, Vec<i64>, Vec<i64>) {
        let mut items: Vec<([f64; 9], i64, i64)> = Vec::new();
        for (o, r) in rows.iter().enumerate() {
            for (i, w) in r.iter().enumerate() {
                items.push((*w, o as i64, i as i64));
            }
        }
        for i in (1..items.len()).rev() {
            items.swap(i, rng.below(i + 1));
        }
        (
            items.iter().map(|t| t.0).collect(),
            items.iter().map(|t| t.1).collect(),
            items.iter().map(|t| t.2).collect(),
        )
    }

    fn args(w: &[[f64; 9]], o: &[i64], i: &[i64]) -> Vec<Arg> {
        vec![
            Arg::Array(fsl64(&w.iter().copied().map(Some).collect::<Vec<_>>())),
            Arg::Array(Arc::new(Int64Array::from(o.to_vec()))),
            Arg::Array(Arc::new(Int64Array::from(i.to_vec()))),
        ]
    }

    fn run1(a: &[Arg], n: usize) -> Result<Option<f64>> {
        let r = run_all_paths(&orthogonality_udaf(), a, &vec![0; n], 1, None, 9)?;
        assert_results_close(&r, 1e-9, 1e-12);
        Ok(f64_at(&r.one_pass, 0))
    }

    fn unit(k: usize) -> [f64; 9] {
        let mut e = [0.0; 9];
        e[k] = 1.0;
        e
    }

    #[test]
    fn orthonormal_set_is_one() {
        // 3 out channels x 2 in channels: out o has e_o in channel 0 and e_{o+3} * 2 in
        // channel 1 (scaled: normalisation removes it).
        let rows: Vec<Vec<[f64; 9]>> = (0..3)
            .map(|o| vec![unit(o), unit(o + 3).map(|v| 2.0 * v)])
            .collect();
        let (w, o, i) = layer(&rows, &mut Rng::new(1));
        assert_eq!(run1(&args(&w, &o, &i), 6).unwrap(), Some(1.0));
    }

    #[test]
    fn hand_cases() {
        // numpy: W = [[1,0,..],[1,1,0..]] normalised; G01 = 1/sqrt(2);
        // 1 - 2 * 0.70710678 / 2 = 0.29289321881345254.
        let mut b = unit(0);
        b[1] = 1.0;
        let (w, o, i) = layer(&[vec![unit(0)], vec![b]], &mut Rng::new(2));
        let got = run1(&args(&w, &o, &i), 2).unwrap().unwrap();
        assert!((got - 0.292_893_218_813_452_54).abs() < 1e-15, "{got}");
        // identical rows: G = all ones -> 1 - n(n-1)/(n(n-1)) = 0
        let (w, o, i) = layer(&[vec![b], vec![b], vec![b]], &mut Rng::new(3));
        assert!(run1(&args(&w, &o, &i), 3).unwrap().unwrap().abs() < 1e-15);
        // all-zero layer, 2 out channels: |0 - I| sums to 2 -> 1 - 2/2 = 0
        let (w, o, i) = layer(&[vec![[0.0; 9]], vec![[0.0; 9]]], &mut Rng::new(4));
        assert_eq!(run1(&args(&w, &o, &i), 2).unwrap(), Some(0.0));
        // one out channel / empty: NULL
        assert_eq!(run1(&args(&[b, b], &[0, 0], &[0, 1]), 2).unwrap(), None);
        assert_eq!(run1(&args(&[], &[], &[]), 0).unwrap(), None);
        // float32 input
        let a = vec![
            Arg::Array(fsl32(&[unit(0), b])),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 1]))),
            Arg::Array(Arc::new(Int64Array::from(vec![0, 0]))),
        ];
        let got = run1(&a, 2).unwrap().unwrap();
        assert!((got - 0.292_893_218_813_452_54).abs() < 1e-7, "{got}");
    }

    #[test]
    fn missing_and_duplicate_pairs_are_errors() {
        let e = run1(&args(&[unit(0); 3], &[0, 0, 1], &[0, 1, 0]), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("missing filter (out_channel 1, in_channel 1)"),
            "{e}"
        );
        let e = run1(&args(&[unit(0); 3], &[0, 1, 1], &[0, 0, 0]), 3).unwrap_err();
        assert!(
            e.to_string()
                .contains("duplicate filter (out_channel 1, in_channel 0)"),
            "{e}"
        );
    }

    proptest! {
        /// The matrix-product kernel equals the pairwise reference on larger layers too.
        #[test]
        fn kernel_matches_reference(seed in 0u64..1000, n in 0usize..70, d in 1usize..30, zero_row in proptest::option::of(0usize..40)) {
            let mut rng = Rng::new(seed);
            let mut rows: Vec<Vec<f64>> = (0..n).map(|_| (0..d).map(|_| rng.uniform(-1.0, 1.0)).collect()).collect();
            if let Some(z) = zero_row.filter(|&z| z < n) {
                rows[z] = vec![0.0; d];
            }
            let want = orthogonality_ref(&rows);
            let mut flat: Vec<f64> = rows.iter().flatten().copied().collect();
            let mut flat2 = flat.clone();
            let got = orthogonality_kernel(&mut flat, n, d);
            // Tiny blocks: many blocks of one to a few rows each.
            let blocked = orthogonality_blocked(&mut flat2, n, d, (seed as usize % 5 + 1) * n.max(1));
            for got in [got, blocked] {
                match (got, want) {
                    (Some(g), Some(w)) => prop_assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{g} vs {w}"),
                    (g, w) => prop_assert_eq!(g, w),
                }
            }
        }

        #[test]
        fn every_path_matches_reference(seed in 0u64..500, n_out in 1usize..6, n_in in 1usize..4, groups in 1usize..3) {
            let mut rng = Rng::new(seed);
            let mut w = Vec::new();
            let mut o = Vec::new();
            let mut i = Vec::new();
            let mut gi = Vec::new();
            let mut want = Vec::new();
            for g in 0..groups {
                let rows: Vec<Vec<[f64; 9]>> = (0..n_out)
                    .map(|_| (0..n_in).map(|_| std::array::from_fn(|_| rng.uniform(-1.0, 1.0))).collect())
                    .collect();
                let flat: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().flatten().copied().collect()).collect();
                want.push(orthogonality_ref(&flat));
                let (ww, oo, ii) = layer(&rows, &mut rng);
                gi.extend(std::iter::repeat_n(g, ww.len()));
                w.extend(ww);
                // channels need not start at 0
                o.extend(oo.iter().map(|v| v * 3 + 5));
                i.extend(ii.iter().map(|v| v * 2 - 1));
            }
            let r = run_all_paths(&orthogonality_udaf(), &args(&w, &o, &i), &gi, groups, None, seed).unwrap();
            assert_results_close(&r, 1e-9, 1e-12);
            for (g, want) in want.iter().enumerate() {
                match (f64_at(&r.one_pass, g), *want) {
                    (Some(a), Some(b)) => prop_assert!((a - b).abs() < 1e-12, "{} vs {}", a, b),
                    (a, b) => prop_assert_eq!(a, b),
                }
            }
        }
    }
}
