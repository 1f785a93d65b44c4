//! Parquet's DELTA_BINARY_PACKED encoding of integer columns: the store's id columns
//! and exports' (`filterdb_sql`), as one-page column chunks ([`int_chunk`]), and the
//! decoder the scan reads them back with, a batch at a time ([`Decoder`]).
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
//! consecutive), so most blocks have one delta and a zero bit width. The encoder takes
//! each block that lies whole in one piece (nearly all) as a fixed-size array, on which
//! the compiler vectorises the deltas, the test for one delta, the block's minimum and
//! the miniblocks' widths; the values' bounds come from a block's two ends when its
//! deltas have one sign (runs, counting, steps to the next channel), and the
//! miniblocks are packed by code unrolled for each width. Blocks cut by a piece's end
//! and the last one take a general path. `delta_encode` in `benches/delta.rs` measures
//! it against the scalar version it replaced (the same bytes): 2.8-5x the values/s on
//! the id columns. The decoder is by hand for the same runs, and because parquet-rs's
//! Arrow reader decodes a whole row group's column into fresh memory: the scan decodes
//! each batch's values where it forms the batch (see [`Decoder`]).

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

/// An integer type Parquet stores as INT32 or INT64 (with the bit operations the
/// encoder's vectorised tests use).
pub trait DeltaInt:
    Copy + Ord + Default + std::ops::BitOr<Output = Self> + std::ops::BitXor<Output = Self>
{
    /// `self - prev` in the type's width (wrapping).
    fn delta(self, prev: Self) -> Self;
    /// `self - min` in the type's width (wrapping), as unsigned bits.
    fn offset_from(self, min: Self) -> u64;
    fn to_i64(self) -> i64;
    /// The type's low bits of `v` (wrapping).
    fn from_i64(v: i64) -> Self;
    /// `self + d` in the type's width (wrapping).
    fn plus(self, d: Self) -> Self;
    /// Bits in the type.
    const BITS: u32;
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
    fn from_i64(v: i64) -> i32 {
        v as i32
    }
    fn plus(self, d: i32) -> i32 {
        self.wrapping_add(d)
    }
    const BITS: u32 = 32;
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
    fn from_i64(v: i64) -> i64 {
        v
    }
    fn plus(self, d: i64) -> i64 {
        self.wrapping_add(d)
    }
    const BITS: u32 = 64;
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
///
/// Returns the values' minimum and maximum (`None` without values), found block by
/// block while the values are in cache rather than in a pass of their own.
pub fn encode<T: DeltaInt>(parts: &[&[T]], out: &mut Vec<u8>) -> (Option<T>, Option<T>) {
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
    let mut bounds = (first, first);
    // The first piece after its first value, then every later one: each is cut where
    // blocks end, and a piece's deltas are taken after the value carried before it.
    for mut rest in std::iter::once(head.get(1..).unwrap_or_default()).chain(pieces) {
        while !rest.is_empty() {
            if m == 0 && rest.len() >= BLOCK {
                // The blocks that lie whole in this piece (nearly all of them: a piece
                // is a batch of thousands of values) on the fixed-size path, each with
                // the value before it: the piece's own but for the first.
                let mut window = [prev; BLOCK + 1];
                window[1..].copy_from_slice(&rest[..BLOCK]);
                whole_block(&window, &mut bounds, out);
                let mut at = BLOCK;
                while let Some(window) = rest[at - 1..].first_chunk::<{ BLOCK + 1 }>() {
                    whole_block(window, &mut bounds, out);
                    at += BLOCK;
                }
                prev = rest[at - 1];
                rest = &rest[at..];
                continue;
            }
            let take = (BLOCK - m).min(rest.len());
            let (piece, tail) = rest.split_at(take);
            deltas[m] = piece[0].delta(prev);
            for (d, w) in deltas[m + 1..m + take].iter_mut().zip(piece.windows(2)) {
                *d = w[1].delta(w[0]);
            }
            prev = piece[take - 1];
            if let (Some(lo), Some(hi)) = self::bounds(piece) {
                bounds = (bounds.0.min(lo), bounds.1.max(hi));
            }
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
    if count == 0 {
        return (None, None);
    }
    (Some(bounds.0), Some(bounds.1))
}

/// A block of [`BLOCK`] values that lie in one piece, after the value before them
/// (`window[0]`): [`block`]'s output, and the values' minimum and maximum folded into
/// `bounds`. On fixed-size arrays, so the compiler drops the bounds checks and
/// vectorises the loops. The deltas are taken between neighbours of one array and
/// stored in step with the loads that read them back: with `prev` as a separate first
/// delta, the vector stores were one value off the loads, which then waited for the
/// stores to reach the cache (store forwarding fails on a partial overlap; 20-30 % of
/// the speed measured).
fn whole_block<T: DeltaInt>(window: &[T; BLOCK + 1], bounds: &mut (T, T), out: &mut Vec<u8>) {
    let mut deltas = [T::default(); BLOCK];
    for k in 0..BLOCK {
        deltas[k] = window[k + 1].delta(window[k]);
    }
    let values = window.last_chunk::<BLOCK>().expect("BLOCK + 1 values");
    let (lo, hi) = ends(values, full_block(&deltas, out)).unwrap_or_else(|| min_max(values));
    *bounds = (bounds.0.min(lo), bounds.1.max(hi));
}

/// The minimum and maximum of `values` from its ends, when the deltas (from `lo` to at
/// most `hi`, as integers) all have one sign and the values cannot wrap around the type's range on
/// the way: then they only go up (or only down). True of most blocks of ids (runs,
/// counting, steps to the next channel), and cheaper than a pass over the values.
fn ends<T: DeltaInt>(values: &[T; BLOCK], (lo, hi): (i128, i128)) -> Option<(T, T)> {
    let (first, last) = (values[0], values[BLOCK - 1]);
    let from = i128::from(first.to_i64());
    let steps = BLOCK as i128 - 1;
    let top = (1i128 << (T::BITS - 1)) - 1;
    if lo >= 0 && from + steps * hi <= top {
        Some((first, last))
    } else if hi <= 0 && from + steps * lo >= -top - 1 {
        Some((last, first))
    } else {
        None
    }
}

/// The minimum and maximum of a block's values. Not inlined: inlined into the encoder's
/// loop it slowed the whole loop down (measured: out_channel at two thirds of the
/// speed).
#[inline(never)]
fn min_max<T: DeltaInt>(values: &[T; BLOCK]) -> (T, T) {
    let (mut lo, mut hi) = (values[0], values[0]);
    for &v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

/// One block of deltas (all [`BLOCK`], or the stream's last ones): its minimum, the
/// miniblocks' bit widths, the packed offsets.
fn block<T: DeltaInt>(deltas: &[T], out: &mut Vec<u8>) {
    if let Ok(deltas) = <&[T; BLOCK]>::try_from(deltas) {
        full_block(deltas, out);
        return;
    }
    let min = deltas.iter().copied().min().unwrap_or_default();
    put_zigzag(out, min.to_i64());
    let widths = out.len();
    out.extend_from_slice(&[0; MINIS]);
    for (j, mini) in deltas.chunks(PER_MINI).enumerate() {
        let bits = mini.iter().fold(0u64, |acc, d| acc | d.offset_from(min));
        let width = bit_len(bits);
        out[widths + j] = width as u8;
        pack(mini, min, width, out);
    }
}

/// [`block`] of a whole block, on fixed-size arrays the compiler vectorises. Returns a
/// range the deltas lie in, as integers: from the minimum to the most the widths allow.
///
/// A miniblock's width is the bit length of the OR of its offsets `delta - min` (in the
/// type's width, as unsigned bits: they keep the deltas' order), whose highest bit is
/// that of the largest offset. Two vector instructions a delta, where a running maximum
/// takes four in x86-64's baseline (SSE2 has no 32- or 64-bit signed minimum or
/// maximum); the block's minimum costs that once.
fn full_block<T: DeltaInt>(deltas: &[T; BLOCK], out: &mut Vec<u8>) -> (i128, i128) {
    // A run (one value, or counting) has one delta: no minimum to look for, nothing to
    // pack. Bitwise, as the test is two vector instructions a delta.
    let first = deltas[0];
    let unlike = deltas
        .iter()
        .fold(T::default(), |acc, &d| acc | (d ^ first));
    if unlike == T::default() {
        put_zigzag(out, first.to_i64());
        out.extend_from_slice(&[0; MINIS]);
        let d = i128::from(first.to_i64());
        return (d, d);
    }
    let mut min = first;
    for &d in deltas {
        min = min.min(d);
    }
    put_zigzag(out, min.to_i64());
    let (minis, _) = deltas.as_chunks::<PER_MINI>();
    let mut widths = [0u32; MINIS];
    for (w, mini) in widths.iter_mut().zip(minis) {
        let bits = mini.iter().fold(T::default(), |acc, &d| acc | d.delta(min));
        *w = bit_len(bits.offset_from(T::default()));
    }
    out.extend_from_slice(&widths.map(|w| w as u8));
    for (mini, width) in minis.iter().zip(widths) {
        pack(mini, min, width, out);
    }
    let min = i128::from(min.to_i64());
    let widest = widths.iter().copied().max().unwrap_or_default();
    (min, min + (1i128 << widest) - 1)
}

/// Bits needed for `v`.
fn bit_len(v: u64) -> u32 {
    64 - v.leading_zeros()
}

/// Bit-pack `mini`'s offsets from `min` at `width` bits, LSB first, padded with zeros
/// to [`PER_MINI`] values (`4 * width` bytes; nothing at width 0).
fn pack<T: DeltaInt>(mini: &[T], min: T, width: u32, out: &mut Vec<u8>) {
    if width == 0 {
        return;
    }
    if width > 32 {
        return pack_wide(mini, min, width, out);
    }
    // Offsets of at most 32 bits, in a type the packers below can shift without
    // widening (and zeros past a short miniblock's end: its padding).
    let mut offsets = [0u32; PER_MINI];
    for (o, d) in offsets.iter_mut().zip(mini) {
        *o = d.offset_from(min) as u32;
    }
    macro_rules! widths {
        ($($w:literal)*) => {
            match width {
                $($w => pack_narrow::<$w>(&offsets, out),)*
                _ => unreachable!("width {width} is not 1 to 32"),
            }
        };
    }
    widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
        31 32);
}

/// Repeat `$body` for `$k` = each of the literals, written out: LLVM does not unroll a
/// loop of 32 steps of [`pack_narrow`] on its own.
macro_rules! unrolled {
    ($k:ident in [$($i:literal)*] $body:block) => {
        $({
            let $k: usize = $i;
            $body
        })*
    };
}

/// [`pack`] at a width `W` of 1 to 32 known at compile time: unrolled, each value's
/// word and shift are constants, where a width known only at run time costs a
/// variable shift, a test and a branch per value.
fn pack_narrow<const W: u32>(offsets: &[u32; PER_MINI], out: &mut Vec<u8>) {
    let w = W as usize;
    // 32 values of `W` bits fill `W / 2` 64-bit words, and half of one more when `W`
    // is odd.
    let mut words = [0u64; PER_MINI / 2];
    unrolled!(k in [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27
        28 29 30 31] {
        let v = u64::from(offsets[k]);
        let (i, shift) = (k * w / 64, k * w % 64);
        words[i] |= v << shift;
        if shift + w > 64 {
            words[i + 1] |= v >> (64 - shift);
        }
    });
    let mut bytes = [0u8; 4 * PER_MINI];
    for (b, word) in bytes.chunks_exact_mut(8).zip(&words).take(w.div_ceil(2)) {
        b.copy_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&bytes[..4 * w]);
}

/// [`pack`] at more than 32 bits (INT64 columns only, hardly ever ids), and
/// [`encode_ref`]'s packer at any width: value by value through a 128-bit accumulator.
fn pack_wide<T: DeltaInt>(mini: &[T], min: T, width: u32, out: &mut Vec<u8>) {
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

/// The scalar reference of [`encode`]: the encoder it replaced (deltas by `windows(2)`,
/// the bounds in a pass of their own, per block a min pass and per miniblock an OR of
/// the offsets, then packing value by value through a `u128`, [`pack_wide`]'s loop at
/// every width). [`encode`] must write the same bytes and return the same bounds (the
/// tests), and `benches/delta.rs` measures it against this.
pub fn encode_ref<T: DeltaInt>(parts: &[&[T]], out: &mut Vec<u8>) -> (Option<T>, Option<T>) {
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
    let (mut lo, mut hi) = (first, first);
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
            if let (Some(l), Some(h)) = bounds(piece) {
                lo = lo.min(l);
                hi = hi.max(h);
            }
            m += take;
            rest = tail;
            if m == BLOCK {
                block_ref(&deltas, out);
                m = 0;
            }
        }
    }
    if m > 0 {
        block_ref(&deltas[..m], out);
    }
    if count == 0 {
        return (None, None);
    }
    (Some(lo), Some(hi))
}

/// One block of deltas: its minimum, the miniblocks' bit widths, the packed offsets.
fn block_ref<T: DeltaInt>(deltas: &[T], out: &mut Vec<u8>) {
    let min = deltas.iter().copied().min().unwrap_or_default();
    put_zigzag(out, min.to_i64());
    let widths = out.len();
    out.extend_from_slice(&[0; MINIS]);
    for (j, mini) in deltas.chunks(PER_MINI).enumerate() {
        let bits = mini.iter().fold(0u64, |acc, d| acc | d.offset_from(min));
        let width = 64 - bits.leading_zeros();
        out[widths + j] = width as u8;
        if width > 0 {
            pack_wide(mini, min, width, out);
        }
    }
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
    let (min, max) = encode(parts, &mut body);
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

/// Reads a DELTA_BINARY_PACKED stream ([`encode`]'s, or any conforming writer's) a run
/// of values at a time, a miniblock at a time: the scan decodes each batch's ids where
/// it builds the batch, into small buffers the allocator reuses, instead of a whole row
/// group's column into fresh memory (parquet-rs's reader: ~18 % of an npy export's CPU,
/// a third of it the kernel zeroing the new pages).
#[derive(Debug, Clone)]
pub struct Decoder<T> {
    data: Bytes,
    /// The next unread byte of `data`.
    pos: usize,
    minis: usize,
    per_mini: usize,
    /// Values not yet decoded into `buf`.
    left: usize,
    /// The last value decoded.
    prev: T,
    /// The current block's minimum delta and its miniblocks' bit widths.
    min: T,
    widths: Vec<u8>,
    /// The current block's next miniblock (`minis`: a block header comes next).
    next_mini: usize,
    /// Decoded values `buf[at..len]` not handed out yet.
    buf: Vec<T>,
    /// `k * steps_of` for k = 1..=per_mini (arithmetic runs).
    steps: Vec<T>,
    steps_of: Option<T>,
    at: usize,
    len: usize,
}

fn read_varint(data: &[u8], pos: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let Some(&byte) = data.get(*pos) else {
            break;
        };
        *pos += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(ParquetError::General(
        "DELTA_BINARY_PACKED: a varint runs past its page".into(),
    ))
}

fn read_zigzag(data: &[u8], pos: &mut usize) -> Result<i64> {
    let v = read_varint(data, pos)?;
    Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// The `width` bits (58 to 64) of `body` from bit `bit` on (LSB first); bytes past
/// the end read as zeros.
fn wide_bits_at(body: &[u8], bit: usize, width: u32) -> u64 {
    let v = (u128::from_le_bytes(padded(body, bit / 8)) >> (bit % 8)) as u64;
    if width == 64 {
        v
    } else {
        v & ((1u64 << width) - 1)
    }
}

impl<T: DeltaInt> Decoder<T> {
    /// A decoder of the stream at the start of `data` (a page's values).
    ///
    /// # Errors
    /// A header that does not describe a valid stream.
    pub fn new(data: Bytes) -> Result<Decoder<T>> {
        let mut pos = 0;
        let block = read_varint(&data, &mut pos)?;
        let minis = read_varint(&data, &mut pos)?;
        let count = read_varint(&data, &mut pos)?;
        let first = read_zigzag(&data, &mut pos)?;
        let per_mini = block.checked_div(minis).unwrap_or(0);
        if block == 0
            || block % 128 != 0
            || block > 1 << 16
            || per_mini == 0
            || per_mini % 32 != 0
            || block % minis != 0
        {
            return Err(ParquetError::General(format!(
                "DELTA_BINARY_PACKED: a block of {block} values in {minis} miniblocks is not valid"
            )));
        }
        let (minis, per_mini) = (minis as usize, per_mini as usize);
        let count = usize::try_from(count)
            .map_err(|_| ParquetError::General(format!("DELTA_BINARY_PACKED: {count} values")))?;
        let first = T::from_i64(first);
        let mut buf = vec![T::default(); per_mini];
        buf[0] = first;
        Ok(Decoder {
            data,
            pos,
            minis,
            per_mini,
            left: count.saturating_sub(1),
            prev: first,
            min: T::default(),
            widths: vec![0; minis],
            next_mini: minis,
            buf,
            steps: vec![T::default(); per_mini],
            steps_of: None,
            at: 0,
            len: usize::from(count > 0),
        })
    }

    /// Values not read yet.
    pub fn remaining(&self) -> usize {
        self.left + self.len - self.at
    }

    /// Read the next block's header when the current block is used up.
    fn block_header(&mut self) -> Result<()> {
        if self.next_mini < self.minis {
            return Ok(());
        }
        self.min = T::from_i64(read_zigzag(&self.data, &mut self.pos)?);
        let widths = self
            .data
            .get(self.pos..self.pos + self.minis)
            .ok_or_else(|| {
                ParquetError::General(
                    "DELTA_BINARY_PACKED: a block header runs past its page".into(),
                )
            })?;
        self.widths.copy_from_slice(widths);
        self.pos += self.minis;
        self.next_mini = 0;
        Ok(())
    }

    /// Decode the next miniblock's first `dst.len()` values (all of them, or the
    /// stream's last ones) into `dst`.
    fn mini<S: Slot<T>>(&mut self, dst: &mut [S]) -> Result<()> {
        self.block_header()?;
        let width = u32::from(self.widths[self.next_mini]);
        if width > T::BITS {
            return Err(ParquetError::General(format!(
                "DELTA_BINARY_PACKED: a miniblock of width {width} in a {}-bit column",
                T::BITS
            )));
        }
        let n = dst.len();
        let end = (self.pos + self.per_mini * width as usize / 8).min(self.data.len());
        // The miniblock and the bytes after it, which word reads may include (masked).
        let body = &self.data[self.pos..];
        if end - self.pos < (n * width as usize).div_ceil(8) {
            return Err(ParquetError::General(
                "DELTA_BINARY_PACKED: a miniblock runs past its page".into(),
            ));
        }
        let (prev, min) = (self.prev, self.min);
        let last = if width == 0 && min == T::default() {
            // A run of one value (a model's, a layer's, an out channel's rows).
            for v in dst.iter_mut() {
                v.set(prev);
            }
            prev
        } else if width == 0 {
            // An arithmetic run: the previous value plus k times the minimum delta,
            // from a table of those multiples kept per minimum.
            if self.steps_of != Some(min) {
                let mut step = T::default();
                for s in &mut self.steps {
                    step = step.plus(min);
                    *s = step;
                }
                self.steps_of = Some(min);
            }
            for (v, &s) in dst.iter_mut().zip(&self.steps) {
                v.set(prev.plus(s));
            }
            prev.plus(self.steps[n - 1])
        } else if width <= 57 {
            // Each value lies in the 8 bytes from its first byte on.
            let mask = (1u64 << width) - 1;
            let mut last = prev;
            for (k, v) in dst.iter_mut().enumerate() {
                let bit = k * width as usize;
                let word = match body.get(bit / 8..bit / 8 + 8) {
                    Some(b) => u64::from_le_bytes(b.try_into().expect("8 bytes")),
                    None => u64::from_le_bytes(padded(body, bit / 8)),
                };
                let offset = (word >> (bit % 8)) & mask;
                last = last.plus(min).plus(T::from_i64(offset as i64));
                v.set(last);
            }
            last
        } else {
            let mut last = prev;
            for (k, v) in dst.iter_mut().enumerate() {
                let offset = wide_bits_at(body, k * width as usize, width);
                last = last.plus(min).plus(T::from_i64(offset as i64));
                v.set(last);
            }
            last
        };
        self.prev = last;
        self.pos = end;
        self.next_mini += 1;
        self.left -= n;
        Ok(())
    }

    /// Append the next `n` values to `out`.
    ///
    /// # Errors
    /// Fewer than `n` values left, or a stream that ends early.
    pub fn read(&mut self, n: usize, out: &mut Vec<T>) -> Result<()> {
        self.check(n)?;
        out.reserve(n);
        let from = out.len();
        let mut dst = &mut out.spare_capacity_mut()[..n];
        // What is left of a miniblock decoded before, then whole miniblocks straight
        // into `out`, then the first values of one more through `buf`.
        let k = dst.len().min(self.len - self.at);
        for (d, &v) in dst[..k].iter_mut().zip(&self.buf[self.at..]) {
            d.write(v);
        }
        self.at += k;
        dst = &mut dst[k..];
        while !dst.is_empty() {
            let whole = self.per_mini.min(self.left);
            if dst.len() >= whole {
                let (now, rest) = dst.split_at_mut(whole);
                self.mini(now)?;
                dst = rest;
            } else {
                self.buffer_mini(whole)?;
                let k = dst.len();
                for (d, &v) in dst.iter_mut().zip(&self.buf[..k]) {
                    d.write(v);
                }
                self.at = k;
                dst = &mut [];
            }
        }
        // SAFETY: the loops above wrote each of the `n` values after `from` (an error
        // returns before this, leaving `out` as it was).
        unsafe { out.set_len(from + n) };
        Ok(())
    }

    /// Decode the next miniblock (`n` values) into `buf`.
    fn buffer_mini(&mut self, n: usize) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        let got = self.mini(&mut buf[..n]);
        self.buf = buf;
        got?;
        self.at = 0;
        self.len = n;
        Ok(())
    }

    /// Pass over the next `n` values.
    ///
    /// # Errors
    /// As [`Decoder::read`].
    pub fn skip(&mut self, mut n: usize) -> Result<()> {
        self.check(n)?;
        while n > 0 {
            if self.at == self.len {
                self.buffer_mini(self.per_mini.min(self.left))?;
            }
            let k = n.min(self.len - self.at);
            self.at += k;
            n -= k;
        }
        Ok(())
    }

    fn check(&self, n: usize) -> Result<()> {
        if n > self.remaining() {
            return Err(ParquetError::General(format!(
                "DELTA_BINARY_PACKED: {n} values asked, {} left",
                self.remaining()
            )));
        }
        Ok(())
    }
}

/// Where [`Decoder`] puts a value: a slot of its own buffer, or of a vector's spare
/// capacity (`read` decodes into the caller's vector without zeroing it first: the
/// zeroing was 7 % of an id-only scan).
trait Slot<T> {
    fn set(&mut self, v: T);
}

impl<T> Slot<T> for T {
    fn set(&mut self, v: T) {
        *self = v;
    }
}

impl<T> Slot<T> for std::mem::MaybeUninit<T> {
    fn set(&mut self, v: T) {
        self.write(v);
    }
}

/// The `N` bytes of `body` from `byte` on, zeros past its end (the stream's last
/// words).
#[cold]
fn padded<const N: usize>(body: &[u8], byte: usize) -> [u8; N] {
    let mut b = [0u8; N];
    let tail = body.get(byte..).unwrap_or_default();
    let k = tail.len().min(N);
    b[..k].copy_from_slice(&tail[..k]);
    b
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

    /// `values` cut at `cuts` (taken modulo its length plus one, sorted: equal cuts make
    /// empty parts), and an empty part in front when `lead` is set.
    fn split<'a, T>(values: &'a [T], cuts: &[usize], lead: bool) -> Vec<&'a [T]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (values.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parts: Vec<&[T]> = Vec::new();
        if lead {
            parts.push(&[]);
        }
        let mut at = 0;
        for c in cuts.into_iter().chain([values.len()]) {
            parts.push(&values[at..c]);
            at = c;
        }
        parts
    }

    /// `encode` writes the reference's bytes and returns its bounds, for `values`
    /// whole and in the parts `cuts` makes.
    fn same_as_reference<T: DeltaInt + std::fmt::Debug>(
        values: &[T],
        cuts: &[usize],
        lead: bool,
    ) -> Result<(), TestCaseError> {
        let whole: Vec<&[T]> = vec![values];
        for parts in [whole, split(values, cuts, lead)] {
            let (mut want, mut got) = (vec![9], vec![9]);
            let want_bounds = encode_ref(&parts, &mut want);
            let got_bounds = encode(&parts, &mut got);
            prop_assert_eq!(got_bounds, want_bounds);
            prop_assert!(got == want, "{} bytes, {} expected", got.len(), want.len());
        }
        Ok(())
    }

    /// An id-like column: `runs` of (kind, length, start, c), where kind 0 is a
    /// constant run, 1 counts from `start` resetting every `c` values (in_channel), 2
    /// steps by one every `c` values (out_channel), 3 and 4 the same downwards. Wrapping
    /// (at the type's ends).
    fn ids(runs: &[(u8, usize, i64, usize)]) -> Vec<i64> {
        let mut v = Vec::new();
        for &(kind, len, start, c) in runs {
            let c = c.max(1);
            v.extend((0..len).map(|k| {
                let step = match kind {
                    0 => 0,
                    1 => (k % c) as i64,
                    2 => (k / c) as i64,
                    3 => -((k % c) as i64),
                    _ => -((k / c) as i64),
                };
                start.wrapping_add(step)
            }));
        }
        v
    }

    /// A channel count: the usual ones, or any.
    fn channels() -> impl Strategy<Value = usize> {
        prop_oneof![
            prop::sample::select(vec![1usize, 3, 16, 32, 64, 128, 256, 512]),
            1..700usize
        ]
    }

    fn id_runs() -> impl Strategy<Value = Vec<(u8, usize, i64, usize)>> {
        prop::collection::vec(
            (
                0..5u8,
                1..1500usize,
                prop_oneof![
                    0..4i64,
                    any::<i32>().prop_map(i64::from),
                    // Runs that wrap around i32's or i64's ends.
                    (-600..600i64).prop_map(|k| i64::from(i32::MAX) + k),
                    (-600..600i64).prop_map(|k| i64::from(i32::MIN) + k),
                    (-600..600i64).prop_map(|k| i64::MAX.wrapping_add(k)),
                ],
                channels(),
            ),
            1..6,
        )
    }

    proptest! {
        #[test]
        fn encode_matches_the_reference_on_i32(
            values in prop::collection::vec(
                prop_oneof![any::<i32>(), -3..3i32, Just(i32::MIN), Just(i32::MAX)], 0..1200),
            cuts in prop::collection::vec(0..1200usize, 0..6),
            lead in any::<bool>(),
        ) {
            same_as_reference(&values, &cuts, lead)?;
        }

        #[test]
        fn encode_matches_the_reference_on_i64(
            values in prop::collection::vec(
                prop_oneof![any::<i64>(), -3..3i64, Just(i64::MIN), Just(i64::MAX)], 0..1200),
            cuts in prop::collection::vec(0..1200usize, 0..6),
            lead in any::<bool>(),
        ) {
            same_as_reference(&values, &cuts, lead)?;
        }

        #[test]
        fn encode_matches_the_reference_at_every_width(
            (bits, values) in (0..64u32).prop_flat_map(|bits| {
                let r = i64::MAX >> (63 - bits);
                (Just(bits), prop::collection::vec(-r..=r, 1..1000))
            }),
            base in prop_oneof![Just(0i64), any::<i64>()],
            cuts in prop::collection::vec(0..1000usize, 0..4),
        ) {
            // Values spread over `bits` bits, so deltas need about `bits + 1` or
            // `bits + 2`: each packing width in turn, wrapping near the type's ends
            // when `base` is large.
            let wide: Vec<i64> = values.iter().map(|&v| base.wrapping_add(v)).collect();
            same_as_reference(&wide, &cuts, false)?;
            if bits < 32 {
                let narrow: Vec<i32> = wide.iter().map(|&v| v as i32).collect();
                same_as_reference(&narrow, &cuts, false)?;
            }
        }

        #[test]
        fn encode_matches_the_reference_on_ids(
            runs in id_runs(),
            cuts in prop::collection::vec(0..8000usize, 0..8),
            lead in any::<bool>(),
        ) {
            let wide = ids(&runs);
            let narrow: Vec<i32> = wide.iter().map(|&v| v as i32).collect();
            same_as_reference(&narrow, &cuts, lead)?;
            same_as_reference(&wide, &cuts, lead)?;
        }

        #[test]
        fn encode_matches_the_reference_on_batches_of_ids(
            runs in id_runs(),
            batch in prop_oneof![Just(8192usize), Just(128), Just(BLOCK + 1), 1..300usize],
        ) {
            // Pieces of equal size, as an export's batches come.
            let values: Vec<i32> = ids(&runs).iter().map(|&v| v as i32).collect();
            let parts: Vec<&[i32]> = values.chunks(batch).collect();
            let (mut want, mut got) = (Vec::new(), Vec::new());
            prop_assert_eq!(encode(&parts, &mut got), encode_ref(&parts, &mut want));
            prop_assert!(got == want);
        }
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
        fn the_decoder_reads_and_skips_what_encode_wrote(
            values in prop::collection::vec(
                prop_oneof![any::<i32>(), -3..3i32, Just(i32::MIN), Just(i32::MAX)], 1..900),
            steps in prop::collection::vec((0..300usize, any::<bool>()), 0..8),
        ) {
            let mut bytes = Vec::new();
            encode(&[&values], &mut bytes);
            let mut d = Decoder::<i32>::new(Bytes::from(bytes)).unwrap();
            prop_assert_eq!(d.remaining(), values.len());
            let mut at = 0;
            for (n, skip) in steps.into_iter().chain([(usize::MAX, false)]) {
                let n = n.min(values.len() - at);
                if skip {
                    d.skip(n).unwrap();
                } else {
                    let mut out = vec![-1];
                    d.read(n, &mut out).unwrap();
                    prop_assert_eq!(&out[1..], &values[at..at + n]);
                }
                at += n;
                prop_assert_eq!(d.remaining(), values.len() - at);
            }
            prop_assert!(d.read(1, &mut Vec::new()).is_err());
        }

        #[test]
        fn the_decoder_reads_runs_and_counting(
            runs in prop::collection::vec((-3..3i32, -2..3i32, 1..200usize), 1..12),
            batch in 1..100usize,
        ) {
            // Ids as the store holds them: constant runs, counting runs, jumps.
            let mut values = Vec::new();
            for (start, step, len) in runs {
                values.extend((0..len as i32).map(|k| start * 1000 + step * k));
            }
            let mut bytes = Vec::new();
            encode(&[&values], &mut bytes);
            let mut d = Decoder::<i32>::new(Bytes::from(bytes)).unwrap();
            let mut out = Vec::new();
            while d.remaining() > 0 {
                d.read(batch.min(d.remaining()), &mut out).unwrap();
            }
            prop_assert_eq!(out, values);
        }

        #[test]
        fn the_decoder_reads_i64(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -3..3i64], 1..400)
        ) {
            let mut bytes = Vec::new();
            encode(&[&values], &mut bytes);
            let mut out = Vec::new();
            Decoder::<i64>::new(Bytes::from(bytes)).unwrap().read(values.len(), &mut out).unwrap();
            prop_assert_eq!(out, values);
        }

        #[test]
        fn a_cut_stream_is_an_error_not_a_panic_nor_wrong_values(
            values in prop::collection::vec(any::<i32>(), 1..300),
            cut in 0..2000usize,
        ) {
            let mut bytes = Vec::new();
            encode(&[&values], &mut bytes);
            let cut = cut % bytes.len();
            bytes.truncate(cut);
            // Only the last miniblock's padding may go missing unnoticed.
            let mut out = Vec::new();
            let got = Decoder::<i32>::new(Bytes::from(bytes))
                .and_then(|mut d| d.read(values.len(), &mut out));
            prop_assert!(got.is_err() || out == values);
        }

        #[test]
        fn encode_returns_the_bounds(
            values in prop::collection::vec(any::<i32>(), 0..700),
            cut in 0..700usize,
        ) {
            let cut = cut.min(values.len());
            let got = encode(&[&values[..cut], &values[cut..]], &mut Vec::new());
            prop_assert_eq!(got, (values.iter().min().copied(), values.iter().max().copied()));
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
