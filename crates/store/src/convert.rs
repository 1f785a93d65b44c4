//! Conversion of raw weight tensors into the store's nine weight columns.
//!
//! One pass per layer: read each element of the source dtype, convert once to the store's
//! precision (round to nearest even), scatter it into column `kh * 3 + kw`, and track the
//! layer's largest magnitude and whether any value is non-finite. No allocation per filter.

use half::{bf16, f16};

use crate::input::{KernelLayout, SourceDtype};

/// An element type that can be read from little-endian bytes.
pub(crate) trait SrcElem: Copy {
    const SIZE: usize;
    fn load(b: &[u8]) -> Self;
    fn abs_f64(self) -> f64;
    fn is_finite(self) -> bool;
}

macro_rules! src_elem {
    ($t:ty, $n:expr, $load:expr, $abs:expr, $fin:expr) => {
        impl SrcElem for $t {
            const SIZE: usize = $n;
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                let mut a = [0u8; $n];
                a.copy_from_slice(&b[..$n]);
                $load(a)
            }
            #[inline(always)]
            fn abs_f64(self) -> f64 {
                $abs(self)
            }
            #[inline(always)]
            fn is_finite(self) -> bool {
                $fin(self)
            }
        }
    };
}

src_elem!(
    f32,
    4,
    f32::from_le_bytes,
    |v: f32| f64::from(v.abs()),
    f32::is_finite
);
src_elem!(f64, 8, f64::from_le_bytes, f64::abs, f64::is_finite);
src_elem!(
    f16,
    2,
    f16::from_le_bytes,
    |v: f16| f64::from(v.to_f32().abs()),
    f16::is_finite
);
src_elem!(
    bf16,
    2,
    bf16::from_le_bytes,
    |v: bf16| f64::from(v.to_f32().abs()),
    bf16::is_finite
);

/// Conversion into a store element type, rounding once.
pub(crate) trait ConvertTo<D> {
    fn convert(self) -> D;
}

impl ConvertTo<f16> for f32 {
    #[inline(always)]
    fn convert(self) -> f16 {
        f16::from_f32(self)
    }
}
impl ConvertTo<f16> for f64 {
    #[inline(always)]
    fn convert(self) -> f16 {
        f64_to_f16(self)
    }
}

/// Correctly rounded f64 -> f16 (nearest, ties to even).
///
/// `half`'s `f16::from_f64` rounds through f32 and so can round twice (for example
/// `1 + 2^-11 + 2^-40` becomes 1.0). Rounding to f32 *to odd* first keeps the sticky
/// information, and f32 has more than two extra bits, so the second rounding is exact.
pub(crate) fn f64_to_f16(x: f64) -> f16 {
    let mut f = x as f32;
    if f.is_finite() && f64::from(f) != x && f.to_bits() & 1 == 0 {
        // Move one ulp towards x: the result's last bit becomes 1 ("odd").
        let bits = f.to_bits();
        let toward_larger_magnitude = f64::from(f).abs() < x.abs();
        f = f32::from_bits(if toward_larger_magnitude {
            bits + 1
        } else {
            bits - 1
        });
    }
    f16::from_f32(f)
}
impl ConvertTo<f16> for f16 {
    #[inline(always)]
    fn convert(self) -> f16 {
        self
    }
}
impl ConvertTo<f16> for bf16 {
    #[inline(always)]
    fn convert(self) -> f16 {
        // bf16 -> f32 is exact, so this rounds once.
        f16::from_f32(self.to_f32())
    }
}
impl ConvertTo<f32> for f32 {
    #[inline(always)]
    fn convert(self) -> f32 {
        self
    }
}
impl ConvertTo<f32> for f64 {
    #[inline(always)]
    fn convert(self) -> f32 {
        self as f32
    }
}
impl ConvertTo<f32> for f16 {
    #[inline(always)]
    fn convert(self) -> f32 {
        self.to_f32()
    }
}
impl ConvertTo<f32> for bf16 {
    #[inline(always)]
    fn convert(self) -> f32 {
        self.to_f32()
    }
}

/// What a pass over one layer found.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct LayerScan {
    /// Largest |w| in the source (finite values only).
    pub max_abs: f64,
    /// First filter (out-channel-major index) holding a NaN or infinity, if any.
    pub first_nonfinite: Option<(usize, f64)>,
    /// NaN / infinite source values and the filters holding them (counted only on the
    /// slow path taken when there are any).
    pub nonfinite: NonFiniteCount,
}

/// Counts of non-finite source values in a layer (or a range of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NonFiniteCount {
    /// NaN values.
    pub nan: u64,
    /// Infinite values.
    pub inf: u64,
    /// Filters holding at least one of them.
    pub filters: u64,
}

impl NonFiniteCount {
    /// Whether nothing was counted.
    pub fn is_zero(&self) -> bool {
        self.nan == 0 && self.inf == 0
    }
}

/// Source element index of weight `j` (row-major kh, kw) of filter `k` (out-channel-major).
#[inline(always)]
fn src_index(layout: KernelLayout, out: usize, inp: usize, k: usize, j: usize) -> usize {
    match layout {
        KernelLayout::Oihw => k * 9 + j,
        KernelLayout::Hwio => {
            let (o, i) = (k / inp, k % inp);
            (j * inp + i) * out + o
        }
    }
}

/// Convert filters `range` (out-channel-major indices) of one layer, appending each
/// filter's weights to `cols[j]`.
///
/// `bytes` must hold exactly `out * inp * 9` elements of `S` (checked by the caller).
/// The scan covers the range only; `first_nonfinite` is an index into the whole layer.
pub(crate) fn convert_layer<S, D>(
    bytes: &[u8],
    layout: KernelLayout,
    out: usize,
    inp: usize,
    range: std::ops::Range<usize>,
    cols: &mut [Vec<D>; 9],
) -> LayerScan
where
    S: SrcElem + ConvertTo<D>,
{
    let mut max_abs = 0f64;
    let mut all_finite = true;
    for c in cols.iter_mut() {
        c.reserve(range.len());
    }
    match layout {
        KernelLayout::Oihw => {
            let part = &bytes[range.start * 9 * S::SIZE..range.end * 9 * S::SIZE];
            for filter in part.chunks_exact(9 * S::SIZE) {
                for (j, col) in cols.iter_mut().enumerate() {
                    let v = S::load(&filter[j * S::SIZE..]);
                    all_finite &= v.is_finite();
                    let a = v.abs_f64();
                    if a > max_abs {
                        max_abs = a;
                    }
                    col.push(v.convert());
                }
            }
        }
        KernelLayout::Hwio => {
            for k in range.clone() {
                for (j, col) in cols.iter_mut().enumerate() {
                    let idx = src_index(layout, out, inp, k, j);
                    let v = S::load(&bytes[idx * S::SIZE..]);
                    all_finite &= v.is_finite();
                    let a = v.abs_f64();
                    if a > max_abs {
                        max_abs = a;
                    }
                    col.push(v.convert());
                }
            }
        }
    }
    let mut first_nonfinite = None;
    let mut nonfinite = NonFiniteCount::default();
    if !all_finite {
        // Slow path, only for ranges holding NaN / infinity: the maximum of the finite
        // values, the first filter with a non-finite value, and the counts.
        max_abs = 0.0;
        for k in range.clone() {
            let mut here = false;
            for j in 0..9 {
                let v = S::load(&bytes[src_index(layout, out, inp, k, j) * S::SIZE..]);
                let a = v.abs_f64();
                if v.is_finite() {
                    max_abs = max_abs.max(a);
                    continue;
                }
                here = true;
                if a.is_nan() {
                    nonfinite.nan += 1;
                } else {
                    nonfinite.inf += 1;
                }
                if first_nonfinite.is_none() {
                    first_nonfinite = Some((k, a));
                }
            }
            nonfinite.filters += u64::from(here);
        }
    }
    LayerScan {
        max_abs,
        first_nonfinite,
        nonfinite,
    }
}

/// Number of values of a layer (`bytes` of `dtype`) that are finite but overflow to
/// infinity in float16 (|x| beyond 65504 plus half an ulp). Only called when a layer's
/// largest finite magnitude exceeds float16's range, so it costs nothing otherwise.
pub(crate) fn count_f16_overflow(dtype: SourceDtype, bytes: &[u8]) -> u64 {
    fn count<S: SrcElem + ConvertTo<f16>>(bytes: &[u8]) -> u64 {
        bytes
            .chunks_exact(S::SIZE)
            .map(S::load)
            .filter(|v| v.is_finite() && v.convert().is_infinite())
            .count() as u64
    }
    match dtype {
        SourceDtype::F32 => count::<f32>(bytes),
        SourceDtype::F64 => count::<f64>(bytes),
        SourceDtype::F16 => count::<f16>(bytes),
        SourceDtype::BF16 => count::<bf16>(bytes),
    }
}

impl LayerScan {
    /// The scan of a layer whose ranges were scanned as `self` then `next`.
    pub(crate) fn then(self, next: LayerScan) -> LayerScan {
        LayerScan {
            max_abs: self.max_abs.max(next.max_abs),
            first_nonfinite: self.first_nonfinite.or(next.first_nonfinite),
            nonfinite: NonFiniteCount {
                nan: self.nonfinite.nan + next.nonfinite.nan,
                inf: self.nonfinite.inf + next.nonfinite.inf,
                filters: self.nonfinite.filters + next.nonfinite.filters,
            },
        }
    }
}

/// Dispatch on the source dtype.
pub(crate) fn convert_any<D>(
    dtype: SourceDtype,
    bytes: &[u8],
    layout: KernelLayout,
    out: usize,
    inp: usize,
    range: std::ops::Range<usize>,
    cols: &mut [Vec<D>; 9],
) -> LayerScan
where
    f32: ConvertTo<D>,
    f64: ConvertTo<D>,
    f16: ConvertTo<D>,
    bf16: ConvertTo<D>,
{
    match dtype {
        SourceDtype::F32 => convert_layer::<f32, D>(bytes, layout, out, inp, range, cols),
        SourceDtype::F64 => convert_layer::<f64, D>(bytes, layout, out, inp, range, cols),
        SourceDtype::F16 => convert_layer::<f16, D>(bytes, layout, out, inp, range, cols),
        SourceDtype::BF16 => convert_layer::<bf16, D>(bytes, layout, out, inp, range, cols),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_f32(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn oihw_is_row_major_out_channel_major() {
        // out = 2, in = 1: filter k holds values k*9 .. k*9+8.
        let vals: Vec<f32> = (0..18).map(|x| x as f32).collect();
        let mut cols: [Vec<f32>; 9] = Default::default();
        let scan =
            convert_layer::<f32, f32>(&le_f32(&vals), KernelLayout::Oihw, 2, 1, 0..2, &mut cols);
        assert_eq!(scan.max_abs, 17.0);
        assert_eq!(scan.first_nonfinite, None);
        for (j, col) in cols.iter().enumerate() {
            assert_eq!(col, &vec![j as f32, (9 + j) as f32]);
        }
    }

    #[test]
    fn hwio_matches_transposed_oihw() {
        let (out, inp) = (3usize, 2usize);
        // OIHW value for (o, i, j) = o*100 + i*10 + j
        let oihw: Vec<f32> = (0..out)
            .flat_map(|o| {
                (0..inp).flat_map(move |i| (0..9).map(move |j| (o * 100 + i * 10 + j) as f32))
            })
            .collect();
        let mut hwio = vec![0f32; oihw.len()];
        for o in 0..out {
            for i in 0..inp {
                for j in 0..9 {
                    hwio[(j * inp + i) * out + o] = oihw[(o * inp + i) * 9 + j];
                }
            }
        }
        let mut a: [Vec<f32>; 9] = Default::default();
        let mut b: [Vec<f32>; 9] = Default::default();
        convert_layer::<f32, f32>(
            &le_f32(&oihw),
            KernelLayout::Oihw,
            out,
            inp,
            0..out * inp,
            &mut a,
        );
        convert_layer::<f32, f32>(
            &le_f32(&hwio),
            KernelLayout::Hwio,
            out,
            inp,
            0..out * inp,
            &mut b,
        );
        assert_eq!(a, b);
    }

    proptest::proptest! {
        /// Converting a layer in pieces (as row groups split it) gives the same columns
        /// and scan as converting it whole, in both layouts.
        #[test]
        fn chunked_conversion_equals_whole(out in 1usize..9, inp in 1usize..7, cuts in proptest::collection::vec(0usize..64, 0..4), hwio in proptest::bool::ANY) {
            let n = out * inp;
            let vals: Vec<f32> = (0..n * 9).map(|x| (x as f32 * 0.37).sin()).collect();
            let layout = if hwio { KernelLayout::Hwio } else { KernelLayout::Oihw };
            let mut whole: [Vec<f16>; 9] = Default::default();
            let a = convert_layer::<f32, f16>(&le_f32(&vals), layout, out, inp, 0..n, &mut whole);
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (n + 1)).collect();
            points.push(0);
            points.push(n);
            points.sort_unstable();
            let mut parts: [Vec<f16>; 9] = Default::default();
            let mut scan: Option<LayerScan> = None;
            for w in points.windows(2) {
                let s = convert_layer::<f32, f16>(&le_f32(&vals), layout, out, inp, w[0]..w[1], &mut parts);
                scan = Some(match scan { None => s, Some(p) => p.then(s) });
            }
            proptest::prop_assert_eq!(&whole, &parts);
            proptest::prop_assert_eq!(Some(a), scan);
        }
    }

    #[test]
    fn finds_first_nonfinite_filter() {
        let mut vals = vec![0.5f32; 27];
        vals[20] = f32::INFINITY;
        let mut cols: [Vec<f16>; 9] = Default::default();
        let scan =
            convert_layer::<f32, f16>(&le_f32(&vals), KernelLayout::Oihw, 3, 1, 0..3, &mut cols);
        assert_eq!(scan.first_nonfinite.map(|x| x.0), Some(2));
        assert_eq!(scan.max_abs, 0.5);
        assert_eq!(
            scan.nonfinite,
            NonFiniteCount {
                nan: 0,
                inf: 1,
                filters: 1
            }
        );
    }

    #[test]
    fn counts_nonfinite_values_and_filters_across_ranges() {
        // filter 0: NaN, -inf; filter 1: clean; filter 2: NaN; filter 3: +inf
        let mut vals = vec![-0.75f32; 36];
        vals[1] = f32::NAN;
        vals[8] = f32::NEG_INFINITY;
        vals[22] = f32::NAN;
        vals[35] = f32::INFINITY;
        let bytes = le_f32(&vals);
        let mut cols: [Vec<f32>; 9] = Default::default();
        let whole = convert_layer::<f32, f32>(&bytes, KernelLayout::Oihw, 4, 1, 0..4, &mut cols);
        let want = NonFiniteCount {
            nan: 2,
            inf: 2,
            filters: 3,
        };
        assert_eq!(whole.nonfinite, want);
        assert_eq!(whole.max_abs, 0.75);
        assert_eq!(whole.first_nonfinite.map(|x| x.0), Some(0));
        assert!(whole.first_nonfinite.is_some_and(|x| x.1.is_nan()));
        let mut parts: [Vec<f32>; 9] = Default::default();
        let a = convert_layer::<f32, f32>(&bytes, KernelLayout::Oihw, 4, 1, 0..2, &mut parts);
        let b = convert_layer::<f32, f32>(&bytes, KernelLayout::Oihw, 4, 1, 2..4, &mut parts);
        assert_eq!(a.then(b).nonfinite, want);
        // a clean layer takes the fast path and counts nothing
        let clean = convert_layer::<f32, f32>(
            &le_f32(&[0.5; 9]),
            KernelLayout::Oihw,
            1,
            1,
            0..1,
            &mut parts,
        );
        assert!(clean.nonfinite.is_zero() && clean.first_nonfinite.is_none());
    }

    #[test]
    fn counts_float16_overflows() {
        let vals = [1e6f32, -7e4, 65504.0, 65519.0, 65520.0, 0.5, f32::NAN];
        assert_eq!(count_f16_overflow(SourceDtype::F32, &le_f32(&vals)), 3);
        let f64s: Vec<u8> = [1e300f64, 1.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_f16_overflow(SourceDtype::F64, &f64s), 1);
        let h: Vec<u8> = [f16::MAX, f16::INFINITY]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(count_f16_overflow(SourceDtype::F16, &h), 0);
    }

    #[test]
    fn f16_rounds_once_from_f64() {
        // 1 + 2^-11 + 2^-40 rounds up in one step but to even (down) through f32 first.
        let v = 1.0f64 + 2f64.powi(-11) + 2f64.powi(-40);
        let bytes: Vec<u8> = std::iter::repeat_n(v, 9)
            .flat_map(f64::to_le_bytes)
            .collect();
        let mut cols: [Vec<f16>; 9] = Default::default();
        convert_layer::<f64, f16>(&bytes, KernelLayout::Oihw, 1, 1, 0..1, &mut cols);
        assert!(cols[0][0] > f16::ONE);
        assert_eq!(cols[0][0], f16::from_f32(1.0 + 2f32.powi(-10)));
    }

    proptest::proptest! {
        /// Against an exact reference: the nearest f16 by comparing distances in f64.
        #[test]
        fn f64_to_f16_is_correctly_rounded(x in -70000f64..70000f64) {
            let got = f64_to_f16(x);
            let lo = f16::from_f64(x); // within one ulp
            let cands = [f16::from_bits(lo.to_bits().wrapping_sub(1)), lo, f16::from_bits(lo.to_bits().wrapping_add(1))];
            let best = cands.iter().filter(|c| c.is_finite()).map(|c| (f64::from(c.to_f32()) - x).abs()).fold(f64::INFINITY, f64::min);
            proptest::prop_assert!((f64::from(got.to_f32()) - x).abs() <= best || !got.is_finite());
        }
    }
}
