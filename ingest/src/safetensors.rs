//! Reading `.safetensors` files without copying their weights.
//!
//! [`read_safetensors`] memory-maps a file, hashes its bytes (sha256), parses the header
//! with the `safetensors` crate and keeps every tensor's byte range. The weights stay in
//! the map: [`RawModel::tensors`] hands out borrowed slices, and the normaliser builds a
//! [`ModelInput`](crate::ModelInput) that borrows from the [`RawModel`].

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use sha2::{Digest, Sha256};

use crate::card::io_error;
use crate::error::{IngestError, Result};
use crate::natural_sort::natural_cmp;
use crate::normalise::SKIP_NOT_RANK4;
use crate::{SourceDtype, ValidationReport};

/// The length of the little-endian header-length prefix.
const PREFIX: usize = 8;

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// One tensor of a [`RawModel`], borrowing its bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawTensor<'a> {
    /// Tensor name as stored in the file.
    pub name: &'a str,
    /// The element type as the file spells it.
    pub dtype: Dtype,
    /// The element type if filterdb can store it (F16, BF16, F32, F64).
    pub source_dtype: Option<SourceDtype>,
    /// Shape.
    pub shape: &'a [usize],
    /// The tensor's bytes (little-endian, C order).
    pub bytes: &'a [u8],
}

/// A parsed safetensors file: its hash, size and tensors, with the bytes kept alive.
pub struct RawModel {
    path: PathBuf,
    sha256: String,
    bytes: Bytes,
    tensors: Vec<Entry>,
    report: ValidationReport,
}

impl std::fmt::Debug for RawModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawModel")
            .field("path", &self.path)
            .field("sha256", &self.sha256)
            .field("file_bytes", &self.file_bytes())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Maps a safetensors dtype to the store's, if it is one filterdb can store.
pub fn source_dtype(dtype: Dtype) -> Option<SourceDtype> {
    match dtype {
        Dtype::F16 => Some(SourceDtype::F16),
        Dtype::BF16 => Some(SourceDtype::BF16),
        Dtype::F32 => Some(SourceDtype::F32),
        Dtype::F64 => Some(SourceDtype::F64),
        _ => None,
    }
}

impl RawModel {
    /// The path it was read from, as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lower-case hex sha256 of the file's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    /// What reading found: the tensors skipped because they are not rank 4.
    pub fn report(&self) -> &ValidationReport {
        &self.report
    }

    /// All tensors, in natural order of their names.
    pub fn tensors(&self) -> impl Iterator<Item = RawTensor<'_>> + '_ {
        let data = self.bytes.as_slice();
        self.tensors.iter().map(move |e| RawTensor {
            name: &e.name,
            dtype: e.dtype,
            source_dtype: source_dtype(e.dtype),
            shape: &e.shape,
            bytes: data.get(e.start..e.end).unwrap_or(&[]),
        })
    }

    /// Number of tensors in the file.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the file holds no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Parses safetensors bytes already in memory; `path` is used in messages only.
    ///
    /// # Errors
    /// As [`read_safetensors`].
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<RawModel> {
        parse(path, Bytes::Owned(bytes))
    }
}

/// Memory-maps, hashes and parses a safetensors file.
///
/// Rank-4 tensors (convolution weights) must be F16, BF16, F32 or F64; other tensors of
/// any dtype are kept (and skipped by the normaliser with a report line).
///
/// # Errors
/// A variant naming the file for: missing file ([`IngestError::FileNotFound`]), empty
/// file ([`IngestError::EmptyFile`]), a header length or data offsets past the end of the
/// file ([`IngestError::Truncated`]), a header that is not valid JSON or does not fit the
/// data ([`IngestError::CorruptHeader`]), a header over 100 MB
/// ([`IngestError::HeaderTooLarge`]), a rank-4 tensor of another dtype
/// ([`IngestError::UnsupportedDtype`]).
pub fn read_safetensors(path: &Path) -> Result<RawModel> {
    let file = File::open(path).map_err(|e| io_error(path, "opening", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_error(path, "reading metadata of", e))?
        .len();
    if len == 0 {
        return Err(IngestError::EmptyFile {
            path: path.to_owned(),
        });
    }
    // SAFETY: the map is read-only and private to this process. Like every reader of
    // memory-mapped files we rely on the file not being truncated or rewritten while it
    // is ingested; the content hash is taken from the same mapped bytes that are stored.
    // `populate` pre-faults the whole map in one call (MAP_POPULATE): every byte is read
    // anyway (hash, then conversion), and one fault per page cost ~10 % of ingest time.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|e| io_error(path, "memory-mapping", e))?;
    parse(path, Bytes::Mapped(map))
}

fn parse(path: &Path, bytes: Bytes) -> Result<RawModel> {
    let data = bytes.as_slice();
    if data.is_empty() {
        return Err(IngestError::EmptyFile {
            path: path.to_owned(),
        });
    }
    let sha256 = hex(&Sha256::digest(data));
    let (n, metadata) = SafeTensors::read_metadata(data).map_err(|e| map_error(path, data, e))?;
    let data_start = PREFIX + n;
    let mut tensors = Vec::new();
    for (name, info) in metadata.tensors() {
        let (s, e) = info.data_offsets;
        tensors.push(Entry {
            name,
            dtype: info.dtype,
            shape: info.shape.clone(),
            start: data_start + s,
            end: data_start + e,
        });
    }
    tensors.sort_by(|a, b| natural_cmp(&a.name, &b.name));
    for t in &tensors {
        if t.shape.len() == 4 && source_dtype(t.dtype).is_none() {
            return Err(IngestError::UnsupportedDtype {
                path: path.to_owned(),
                tensor: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
            });
        }
    }
    let mut report = ValidationReport::default();
    for t in tensors.iter().filter(|t| t.shape.len() != 4) {
        report.skip(&t.name, &t.shape, &t.dtype.to_string(), SKIP_NOT_RANK4);
    }
    Ok(RawModel {
        path: path.to_owned(),
        sha256,
        bytes,
        tensors,
        report,
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // writing to a String cannot fail
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The end offset of the tensor data the header declares, if the header is readable JSON.
fn declared_data_end(data: &[u8], n: usize) -> Option<usize> {
    let header = data.get(PREFIX..PREFIX + n)?;
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    let obj = v.as_object()?;
    let mut end = 0usize;
    for (k, t) in obj {
        if k == "__metadata__" {
            continue;
        }
        let e = t.get("data_offsets")?.get(1)?.as_u64()?;
        end = end.max(usize::try_from(e).ok()?);
    }
    Some(PREFIX + n + end)
}

fn map_error(path: &Path, data: &[u8], e: SafeTensorError) -> IngestError {
    let path = path.to_owned();
    let len = data.len();
    let declared = data
        .get(..PREFIX)
        .and_then(|b| <[u8; PREFIX]>::try_from(b).ok())
        .map(u64::from_le_bytes);
    match e {
        SafeTensorError::HeaderTooSmall => IngestError::Truncated {
            path,
            detail: format!("the file has {len} bytes, fewer than the 8-byte header-length prefix"),
        },
        SafeTensorError::HeaderTooLarge => IngestError::HeaderTooLarge {
            path,
            declared: declared.unwrap_or(0),
        },
        SafeTensorError::InvalidHeaderLength => IngestError::Truncated {
            path,
            detail: format!(
                "the header-length prefix says the header has {} bytes, but only {} bytes \
                 follow the prefix",
                declared.unwrap_or(0),
                len.saturating_sub(PREFIX)
            ),
        },
        SafeTensorError::InvalidHeader(e) => IngestError::CorruptHeader {
            path,
            detail: format!("the header is not UTF-8: {e}"),
        },
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            IngestError::CorruptHeader {
                path,
                detail: format!("the header is not a valid safetensors JSON header: {e}"),
            }
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            let n = declared.and_then(|d| usize::try_from(d).ok()).unwrap_or(0);
            match declared_data_end(data, n) {
                Some(end) if end > len => IngestError::Truncated {
                    path,
                    detail: format!(
                        "the header's data offsets end at byte {end}, but the file has only \
                         {len} bytes"
                    ),
                },
                Some(end) => IngestError::CorruptHeader {
                    path,
                    detail: format!(
                        "the header's data offsets end at byte {end}, but the file has {len} \
                         bytes (unexpected trailing bytes)"
                    ),
                },
                None => IngestError::CorruptHeader {
                    path,
                    detail: "the header's data offsets do not cover the file".to_owned(),
                },
            }
        }
        SafeTensorError::InvalidOffset(name) => IngestError::CorruptHeader {
            path,
            detail: format!(
                "tensor {name}: its data offsets are not contiguous with the previous tensor's"
            ),
        },
        SafeTensorError::TensorInvalidInfo => IngestError::CorruptHeader {
            path,
            detail: "a tensor's byte range does not match its shape and dtype".to_owned(),
        },
        SafeTensorError::ValidationOverflow => IngestError::CorruptHeader {
            path,
            detail: "a tensor's shape overflows (number of bytes too large)".to_owned(),
        },
        other => IngestError::Safetensors {
            path,
            source: other,
        },
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a safetensors file by hand: tensors `(name, dtype, shape, bytes)`.
    pub(crate) fn build(tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                (*name).to_owned(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&data);
        out
    }

    pub(crate) fn f32_bytes(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
            .collect()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        p
    }

    fn good() -> Vec<u8> {
        build(&[
            ("features.10.weight", "F32", vec![2, 2, 3, 3], f32_bytes(36)),
            ("features.2.weight", "F32", vec![2, 1, 3, 3], f32_bytes(18)),
            ("features.2.bias", "F32", vec![2], f32_bytes(2)),
            ("steps", "I64", vec![1], vec![0; 8]),
        ])
    }

    #[test]
    fn reads_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "m.safetensors", &good());
        let raw = read_safetensors(&p).unwrap();
        assert_eq!(raw.len(), 4);
        assert_eq!(raw.sha256().len(), 64);
        assert_eq!(raw.file_bytes(), good().len() as u64);
        let names: Vec<&str> = raw.tensors().map(|t| t.name).collect();
        assert_eq!(
            names,
            vec![
                "features.2.bias",
                "features.2.weight",
                "features.10.weight",
                "steps"
            ]
        );
        let t = raw.tensors().nth(2).unwrap();
        assert_eq!(t.bytes, &f32_bytes(36)[..]);
        assert_eq!(t.source_dtype, Some(SourceDtype::F32));
        let skipped: Vec<String> = raw.report().skipped.iter().map(|t| t.describe()).collect();
        assert_eq!(skipped, ["features.2.bias [2] F32", "steps [1] I64"]);
        assert!(
            raw.report()
                .skipped
                .iter()
                .all(|t| t.reason == SKIP_NOT_RANK4)
        );
        // same bytes, same hash, in memory or mapped
        let mem = RawModel::from_bytes(&p, good()).unwrap();
        assert_eq!(mem.sha256(), raw.sha256());
    }

    fn err_of(name: &str, bytes: &[u8]) -> (PathBuf, IngestError) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), name, bytes);
        let e = read_safetensors(&p).unwrap_err();
        (p, e)
    }

    fn assert_names(p: &Path, e: &IngestError, words: &[&str]) {
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        for w in words {
            assert!(msg.contains(w), "{msg:?} lacks {w:?}");
        }
    }

    #[test]
    fn missing_file() {
        let p = PathBuf::from("/nonexistent/dir/m.safetensors");
        let e = read_safetensors(&p).unwrap_err();
        assert!(matches!(e, IngestError::FileNotFound { .. }));
        assert_names(&p, &e, &["no such file"]);
    }

    #[test]
    fn empty_file() {
        let (p, e) = err_of("empty.safetensors", b"");
        assert!(matches!(e, IngestError::EmptyFile { .. }));
        assert_names(&p, &e, &["empty"]);
    }

    #[test]
    fn shorter_than_prefix() {
        let (p, e) = err_of("tiny.safetensors", b"abc");
        assert!(matches!(e, IngestError::Truncated { .. }));
        assert_names(&p, &e, &["truncated", "3 bytes"]);
    }

    #[test]
    fn truncated_data() {
        let mut b = good();
        b.truncate(b.len() - 10);
        let (p, e) = err_of("trunc.safetensors", &b);
        assert!(matches!(e, IngestError::Truncated { .. }), "{e:?}");
        assert_names(&p, &e, &["truncated", "data offsets end at byte"]);
    }

    #[test]
    fn header_length_past_end() {
        let mut b = good();
        b[..8].copy_from_slice(&100_000u64.to_le_bytes());
        let (p, e) = err_of("hlen.safetensors", &b);
        assert!(matches!(e, IngestError::Truncated { .. }), "{e:?}");
        assert_names(&p, &e, &["100000 bytes"]);
    }

    #[test]
    fn header_too_large() {
        let mut b = good();
        b[..8].copy_from_slice(&(200u64 << 20).to_le_bytes());
        let (p, e) = err_of("huge.safetensors", &b);
        assert!(matches!(e, IngestError::HeaderTooLarge { .. }), "{e:?}");
        assert_names(&p, &e, &["100 MB"]);
    }

    #[test]
    fn corrupt_header_json() {
        let mut b = good();
        b[8] = b'[';
        b[9] = b'!';
        let (p, e) = err_of("bad.safetensors", &b);
        assert!(matches!(e, IngestError::CorruptHeader { .. }), "{e:?}");
        assert_names(&p, &e, &["corrupt safetensors header", "JSON"]);
    }

    #[test]
    fn unknown_dtype_string() {
        let b = build(&[("w", "Q4", vec![1, 1, 3, 3], vec![0; 9])]);
        let (p, e) = err_of("q4.safetensors", &b);
        assert!(matches!(e, IngestError::CorruptHeader { .. }), "{e:?}");
        assert_names(&p, &e, &["Q4"]);
    }

    #[test]
    fn unsupported_rank4_dtype() {
        let b = build(&[
            ("conv.weight", "I8", vec![2, 1, 3, 3], vec![0; 18]),
            ("ok.weight", "F32", vec![1, 1, 3, 3], f32_bytes(9)),
        ]);
        let (p, e) = err_of("i8.safetensors", &b);
        assert!(matches!(e, IngestError::UnsupportedDtype { .. }), "{e:?}");
        assert_names(
            &p,
            &e,
            &["conv.weight", "I8", "[2, 1, 3, 3]", "F16, BF16, F32 or F64"],
        );
    }

    #[test]
    fn trailing_bytes() {
        let mut b = good();
        b.extend_from_slice(&[0; 16]);
        let (p, e) = err_of("trail.safetensors", &b);
        assert!(matches!(e, IngestError::CorruptHeader { .. }), "{e:?}");
        assert_names(&p, &e, &["trailing"]);
    }
}
