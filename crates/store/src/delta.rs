//! Parquet's DELTA_BINARY_PACKED encoding of integer columns: the store's id columns
//! and exports' (`filterdb_sql`), as one-page column chunks ([`int_chunk`]).
//!
//! The layout (parquet-format `Encodings.md`): a header `<block size> <miniblocks per
//! block> <value count> <first value>` (ULEB128, the first value zigzag), then per block
//! of up to [`BLOCK`] deltas its minimum delta (zigzag ULEB128), one bit width byte per
//! miniblock, and each miniblock's `delta - min` values bit-packed LSB first at that
//! width, padded with zeros to [`PER_MINI`] values. Deltas wrap in the type's width, as
//! the format allows, so an INT32 column never needs more than 32 bits.
//!
//! Why by hand: parquet-rs's `DeltaBitPackEncoder` (with its per-value statistics)
//! took ~30 % of the CPU of an npy export's ids side file at 24M rows, and ~25 % of an
//! ingest's. Ids come in runs (a model's, a layer's, an out channel's filters are
//! consecutive), so most blocks have one delta and a zero bit width: this encoder tests
//! that per block and packs the rest 32 values at a time.

/// Deltas per block.
pub const BLOCK: usize = 128;
/// Miniblocks per block.
const MINIS: usize = 4;
/// Values per miniblock.
pub const PER_MINI: usize = BLOCK / MINIS;

use bytes::Bytes;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::column::page::Page;
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::{ParquetError, Result};
use parquet::file::statistics::Statistics;
use parquet::schema::types::ColumnDescPtr;

use crate::write::OnePageChunk;

/// An integer type Parquet stores as INT32 or INT64.
pub trait DeltaInt: Copy + Ord + Default {
    /// `self - prev` in the type's width (wrapping).
    fn delta(self, prev: Self) -> Self;
    /// `self - min` in the type's width (wrapping), as unsigned bits.
    fn offset_from(self, min: Self) -> u64;
    fn to_i64(self) -> i64;
    /// A chunk's statistics: no NULLs, these bounds.
    fn statistics(min: Option<Self>, max: Option<Self>) -> Statistics;
}

impl DeltaInt for i32 {
    fn delta(self, prev: i32) -> i32 {
        self.wrapping_sub(prev)
    }
    fn offset_from(self, min: i32) -> u64 {
        u64::from(self.wrapping_sub(min) as u32)
    }
    fn to_i64(self) -> i64 {
        i64::from(self)
    }
    fn statistics(min: Option<i32>, max: Option<i32>) -> Statistics {
        Statistics::int32(min, max, None, Some(0), false)
    }
}

impl DeltaInt for i64 {
    fn delta(self, prev: i64) -> i64 {
        self.wrapping_sub(prev)
    }
    fn offset_from(self, min: i64) -> u64 {
        self.wrapping_sub(min) as u64
    }
    fn to_i64(self) -> i64 {
        self
    }
    fn statistics(min: Option<i64>, max: Option<i64>) -> Statistics {
        Statistics::int64(min, max, None, Some(0), false)
    }
}

/// `v` as ULEB128 (Thrift's and Parquet's varint).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Append the values of `parts` (at least one value in all), one column in pieces,
/// DELTA_BINARY_PACKED to `out`. The pieces are the arrays of the batches that make up
/// a row group: encoding them where they are saves gathering them into one fresh
/// buffer per column (its pages zeroed by the kernel for every row group).
pub fn encode<T: DeltaInt>(parts: &[&[T]], out: &mut Vec<u8>) {
    let count: usize = parts.iter().map(|p| p.len()).sum();
    let mut pieces = parts.iter().copied().skip_while(|p| p.is_empty());
    let head = pieces.next().unwrap_or_default();
    let first = head.first().copied().unwrap_or_default();
    put_varint(out, BLOCK as u64);
    put_varint(out, MINIS as u64);
    put_varint(out, count as u64);
    put_zigzag(out, first.to_i64());
    let mut deltas = [T::default(); BLOCK];
    let mut m = 0;
    let mut prev = first;
    // The first piece after its first value, then every later one: each is cut where
    // blocks end, and a piece's deltas are taken after the value carried before it.
    for mut rest in std::iter::once(head.get(1..).unwrap_or_default()).chain(pieces) {
        while !rest.is_empty() {
            let take = (BLOCK - m).min(rest.len());
            let (piece, tail) = rest.split_at(take);
            deltas[m] = piece[0].delta(prev);
            for (d, w) in deltas[m + 1..m + take].iter_mut().zip(piece.windows(2)) {
                *d = w[1].delta(w[0]);
            }
            prev = piece[take - 1];
            m += take;
            rest = tail;
            if m == BLOCK {
                block(&deltas, out);
                m = 0;
            }
        }
    }
    if m > 0 {
        block(&deltas[..m], out);
    }
}

/// One block of deltas: its minimum, the miniblocks' bit widths, the packed offsets.
fn block<T: DeltaInt>(deltas: &[T], out: &mut Vec<u8>) {
    let min = deltas.iter().copied().min().unwrap_or_default();
    put_zigzag(out, min.to_i64());
    let widths = out.len();
    out.extend_from_slice(&[0; MINIS]);
    for (j, mini) in deltas.chunks(PER_MINI).enumerate() {
        let bits = mini.iter().fold(0u64, |acc, d| acc | d.offset_from(min));
        let width = 64 - bits.leading_zeros();
        out[widths + j] = width as u8;
        pack(mini, min, width, out);
    }
}

/// Bit-pack `mini`'s offsets from `min` at `width` bits, LSB first, padded with zeros
/// to [`PER_MINI`] values (`4 * width` bytes; nothing at width 0).
fn pack<T: DeltaInt>(mini: &[T], min: T, width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    let mut acc: u128 = 0;
    let mut bits = 0;
    for k in 0..PER_MINI {
        let v = mini.get(k).map_or(0, |d| d.offset_from(min));
        acc |= u128::from(v) << bits;
        bits += width;
        if bits >= 64 {
            out.extend_from_slice(&(acc as u64).to_le_bytes());
            acc >>= 64;
            bits -= 64;
        }
    }
    // 32 values fill a whole number of 32-bit words: 0 or 32 bits are left.
    out.extend_from_slice(&(acc as u64).to_le_bytes()[..(bits / 8) as usize]);
}

/// The column chunk of one column's values, given in pieces (`parts`, at least one
/// value in all, no NULLs): one DataPage v2 encoded by [`encode`], its values
/// zstd-compressed when that saves an eighth, with the chunk's min / max statistics,
/// and definition levels when the column is nullable.
///
/// # Errors
/// More rows than a page holds (`u32`), or a failing zstd or page-header write.
pub fn int_chunk<T: DeltaInt>(
    parts: &[&[T]],
    descr: ColumnDescPtr,
) -> Result<(Bytes, ColumnCloseResult)> {
    let rows: usize = parts.iter().map(|p| p.len()).sum();
    let num_rows = u32::try_from(rows)
        .map_err(|_| ParquetError::General(format!("{rows} rows do not fit one page")))?;
    let mut body = Vec::new();
    encode(parts, &mut body);
    let (min, max) = parts
        .iter()
        .map(|p| bounds(p))
        .fold((None, None), |(lo, hi), (l, h)| {
            (lo.into_iter().chain(l).min(), hi.into_iter().chain(h).max())
        });
    let def = definition_levels(rows, descr.max_def_level());
    let uncompressed = def.len() + body.len();
    let zstd =
        zstd::bulk::compress(&body, 1).map_err(|e| ParquetError::General(format!("zstd: {e}")))?;
    let (values, is_compressed, compression) = if zstd.len() * 8 <= body.len() * 7 {
        (zstd, true, Compression::ZSTD(ZstdLevel::try_new(1)?))
    } else {
        (body, false, Compression::UNCOMPRESSED)
    };
    let def_len = u32::try_from(def.len()).unwrap_or(u32::MAX);
    let mut buf = def;
    buf.extend_from_slice(&values);
    let page = Page::DataPageV2 {
        buf: Bytes::from(buf),
        num_values: num_rows,
        encoding: Encoding::DELTA_BINARY_PACKED,
        num_nulls: 0,
        num_rows,
        def_levels_byte_len: def_len,
        rep_levels_byte_len: 0,
        is_compressed,
        statistics: None,
    };
    let chunk = OnePageChunk {
        uncompressed,
        rows,
        encodings: vec![Encoding::DELTA_BINARY_PACKED, Encoding::RLE],
        compression,
        statistics: Some(T::statistics(min, max)),
    };
    chunk.write(page, descr)
}

/// Bits needed for levels up to `max`.
fn level_bit_width(max: i16) -> u32 {
    16 - (max as u16).leading_zeros()
}

/// Definition levels: `n` times `max` as one RLE run (nothing when `max` is 0).
pub fn definition_levels(n: usize, max: i16) -> Vec<u8> {
    let mut out = Vec::new();
    if max > 0 {
        put_varint(&mut out, (n as u64) << 1);
        let bytes = level_bit_width(max).div_ceil(8) as usize;
        out.extend_from_slice(&(max as u32).to_le_bytes()[..bytes]);
    }
    out
}

/// A column's min and max, as the generic writer records them (one pass, in lanes of
/// 16 the compiler vectorises).
pub fn bounds<T: Ord + Copy>(v: &[T]) -> (Option<T>, Option<T>) {
    let Some(&first) = v.first() else {
        return (None, None);
    };
    let (mut lo, mut hi) = ([first; 16], [first; 16]);
    let chunks = v.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..16 {
            lo[k] = lo[k].min(c[k]);
            hi[k] = hi[k].max(c[k]);
        }
    }
    let lo = lo.iter().chain(rest).copied().min();
    let hi = hi.iter().chain(rest).copied().max();
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reference decoder written from the format's text, value by value.
    fn decode(mut b: &[u8], width: u32) -> Vec<i64> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte < 0x80 {
                    return v;
                }
            }
        }
        fn zigzag(b: &mut &[u8]) -> i64 {
            let v = varint(b);
            ((v >> 1) as i64) ^ -((v & 1) as i64)
        }
        let block = varint(&mut b) as usize;
        let minis = varint(&mut b) as usize;
        let n = varint(&mut b) as usize;
        let mut last = zigzag(&mut b);
        let mask = if width == 64 {
            u64::MAX
        } else {
            (1 << width) - 1
        };
        let wrap = |v: i64| -> i64 { if width == 32 { i64::from(v as i32) } else { v } };
        let mut out = vec![last];
        while out.len() < n {
            let min = zigzag(&mut b);
            let widths: Vec<u32> = b[..minis].iter().map(|&w| u32::from(w)).collect();
            b = &b[minis..];
            for w in widths {
                if out.len() == n {
                    break;
                }
                let per = block / minis;
                let body = &b[..per * w as usize / 8];
                b = &b[per * w as usize / 8..];
                for k in 0..per {
                    let mut v = 0u64;
                    for bit in 0..w as usize {
                        let at = k * w as usize + bit;
                        v |= u64::from((body[at / 8] >> (at % 8)) & 1) << bit;
                    }
                    if out.len() < n {
                        last = wrap(last.wrapping_add(min).wrapping_add((v & mask) as i64));
                        out.push(last);
                    }
                }
            }
        }
        assert!(b.is_empty(), "{} bytes left", b.len());
        out
    }

    proptest! {
        #[test]
        fn i32_round_trips(
            values in prop::collection::vec(
                prop_oneof![any::<i32>(), -3..3i32, Just(i32::MIN), Just(i32::MAX)], 1..700)
        ) {
            let mut out = Vec::new();
            encode(&[&values], &mut out);
            let want: Vec<i64> = values.iter().map(|&v| i64::from(v)).collect();
            prop_assert_eq!(decode(&out, 32), want);
        }

        #[test]
        fn parts_encode_as_their_concatenation(
            values in prop::collection::vec(-5..5i32, 1..700),
            cuts in prop::collection::vec(0..700usize, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (values.len() + 1)).collect();
            cuts.sort_unstable();
            let mut parts: Vec<&[i32]> = Vec::new();
            let mut at = 0;
            for c in cuts.into_iter().chain([values.len()]) {
                parts.push(&values[at..c]);
                at = c;
            }
            let (mut whole, mut pieces) = (Vec::new(), Vec::new());
            encode(&[&values], &mut whole);
            encode(&parts, &mut pieces);
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn bounds_are_min_and_max(v in prop::collection::vec(any::<i32>(), 0..100)) {
            prop_assert_eq!(bounds(&v), (v.iter().min().copied(), v.iter().max().copied()));
        }

        #[test]
        fn i64_round_trips(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -3..3i64], 1..400)
        ) {
            let mut out = Vec::new();
            encode(&[&values], &mut out);
            prop_assert_eq!(decode(&out, 64), values);
        }
    }

    #[test]
    fn runs_take_a_few_bytes_per_block() {
        let values: Vec<i32> = vec![7; 1 + 10 * BLOCK];
        let mut out = Vec::new();
        encode(&[&values], &mut out);
        // header (2 + 1 + 2 + 1 bytes), then per block: min delta 0 and four zero widths
        assert_eq!(out.len(), 6 + 10 * (1 + MINIS));
        let counting: Vec<i32> = (0..1 + BLOCK as i32).collect();
        let mut out = Vec::new();
        encode(&[&counting], &mut out);
        assert_eq!(out, [128, 1, 4, 129, 1, 0, 2, 0, 0, 0, 0]);
    }
}
