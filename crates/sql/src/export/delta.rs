//! Parquet's DELTA_BINARY_PACKED encoding of integer columns, for exports' id columns.
//!
//! The layout (parquet-format `Encodings.md`): a header `<block size> <miniblocks per
//! block> <value count> <first value>` (ULEB128, the first value zigzag), then per block
//! of up to [`BLOCK`] deltas its minimum delta (zigzag ULEB128), one bit width byte per
//! miniblock, and each miniblock's `delta - min` values bit-packed LSB first at that
//! width, padded with zeros to [`PER_MINI`] values. Deltas wrap in the type's width, as
//! the format allows, so an INT32 column never needs more than 32 bits.
//!
//! Why by hand: parquet-rs's `DeltaBitPackEncoder` (with its per-value statistics)
//! took ~30 % of the CPU of an npy export's ids side file at 24M rows. Exported ids come
//! in runs (a model's, a layer's, an out channel's filters are consecutive), so most
//! blocks have one delta and a zero bit width: this encoder tests that per block and
//! packs the rest 32 values at a time.

/// Deltas per block.
pub(crate) const BLOCK: usize = 128;
/// Miniblocks per block.
const MINIS: usize = 4;
/// Values per miniblock.
pub(crate) const PER_MINI: usize = BLOCK / MINIS;

/// An integer type Parquet stores as INT32 or INT64.
pub(crate) trait DeltaInt: Copy + Ord + Default {
    /// `self - prev` in the type's width (wrapping).
    fn delta(self, prev: Self) -> Self;
    /// `self - min` in the type's width (wrapping), as unsigned bits.
    fn offset_from(self, min: Self) -> u64;
    fn to_i64(self) -> i64;
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
}

pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
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
pub(crate) fn encode<T: DeltaInt>(parts: &[&[T]], out: &mut Vec<u8>) {
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
