//! Reading NumPy `.npz` archives and `.npy` files of named weight arrays.
//!
//! An `.npz` archive (`numpy.savez` / `savez_compressed`: a zip of `.npy` members, stored
//! or deflated) ingests like a safetensors file: each member is one tensor, named as
//! `numpy.load` names it (the member name without its `.npy` suffix). A `.npy` file
//! holds one array, named by the file stem (`conv1.npy` -> tensor `conv1`).
//!
//! [`read_numpy`] reads the file, hashes it (sha256 of the file's bytes, so dedup and
//! `models.source_sha256` refer to the `.npz` / `.npy` itself), and builds the same
//! [`RawModel`] the safetensors reader produces: the rank-4 float arrays (convolution
//! candidates) as little-endian, C-order tensors. float16, float32 and float64 are
//! read in either byte order and in C or Fortran order (Fortran-order arrays are
//! transposed to C order, so a filter is the same nine weights whichever order numpy
//! wrote). Arrays that are not rank 4 (biases, norms, step counters of any dtype) are
//! skipped without reading their data and listed in the report. [`normalise_numpy`]
//! hands the [`RawModel`] to [`normalise`](crate::normalise()), so cards, manifests,
//! layer order and the commit protocol are shared with safetensors, and sets
//! `source_format` to `npz` / `npy`.
//!
//! The `.npy` header is parsed here rather than with a crate: the format (NumPy's
//! `numpy.lib.format`, NEP 1) is a 6-byte magic, a version, a header length and one
//! Python dict literal with three keys; `npyz` parses that literal with `py_literal`, a
//! full Python-literal grammar built on `pest` (four more crates and a proc macro for
//! three keys), and its `npz` feature pins `zip` 0.6. The zip container itself is read
//! with the maintained `zip` crate (deflate through `flate2`/`zlib-rs`, already in the
//! dependency tree for Parquet).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Cursor, Read};
use std::path::Path;

use memmap2::Mmap;
use sha2::{Digest, Sha256};

use crate::card::{ModelCard, ModelOverrides, io_error};
use crate::error::{IngestError, Result};
use crate::normalise::{NormaliseOptions, SKIP_NOT_RANK4, VocabExtra, normalise_with};
use crate::safetensors::RawModel;
use crate::{ModelInput, SkippedTensor, ValidationReport};

/// The first six bytes of every `.npy` array.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Largest `.npy` header accepted (NumPy itself refuses headers over 10 000 bytes unless
/// told otherwise; structured dtypes make long ones).
const MAX_HEADER: usize = 1 << 20;

/// Whether `path` names a NumPy file (extension `.npz` or `.npy`, any case).
pub fn is_numpy_path(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz") || e.eq_ignore_ascii_case("npy"))
}

/// A NumPy file read into a [`RawModel`], with the hash and size of the file itself.
pub struct NumpyModel {
    raw: RawModel,
    format: &'static str,
    sha256: String,
    file_bytes: u64,
    report: ValidationReport,
}

impl std::fmt::Debug for NumpyModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumpyModel")
            .field("path", &self.raw.path())
            .field("format", &self.format)
            .field("sha256", &self.sha256)
            .field("file_bytes", &self.file_bytes)
            .field("tensors", &self.raw.len())
            .field("skipped", &self.report.skipped.len())
            .finish()
    }
}

impl NumpyModel {
    /// The rank-4 float arrays as a [`RawModel`] (little-endian, C order). Its own
    /// `sha256()` and `file_bytes()` describe that in-memory form; use
    /// [`NumpyModel::sha256`] and [`NumpyModel::file_bytes`] for the file.
    pub fn raw(&self) -> &RawModel {
        &self.raw
    }

    /// `"npz"` or `"npy"`.
    pub fn format(&self) -> &'static str {
        self.format
    }

    /// Lower-case hex sha256 of the file's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }

    /// What reading found: arrays skipped (not rank 4), bytes ignored.
    pub fn report(&self) -> &ValidationReport {
        &self.report
    }
}

/// Reads a `.npz` archive or a `.npy` file, picked by extension (`.npy` -> one array,
/// anything else -> an archive).
///
/// # Errors
/// As [`read_npz`] and [`read_npy`].
pub fn read_numpy(path: &Path) -> Result<NumpyModel> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        read_npy(path)
    } else {
        read_npz(path)
    }
}

/// Reads an `.npz` archive: every member that is an `.npy` array is a tensor.
///
/// # Errors
/// [`IngestError::FileNotFound`] / [`IngestError::Io`] / [`IngestError::EmptyFile`] for
/// the file; [`IngestError::Numpy`] naming the file, and the member where one is at
/// fault, for: a file that is not a zip archive or is truncated (no central
/// directory), a member that is not an `.npy` array (bad magic), a truncated member or
/// header, a header that does not parse, a member that fails its CRC or does not
/// inflate, an `object` (pickled) array, a rank-4 array whose dtype is not float16,
/// float32 or float64 (int8, complex, structured, ...), two members giving one array
/// name.
pub fn read_npz(path: &Path) -> Result<NumpyModel> {
    let map = map_file(path)?;
    let data: &[u8] = &map;
    let sha256 = hex(&Sha256::digest(data));
    let fail = |member: Option<&str>, detail: String| numpy_error(path, member, detail);
    let mut zip = zip::ZipArchive::new(Cursor::new(data)).map_err(|e| {
        let hint = if data.starts_with(MAGIC) {
            " (it is a single .npy array: name it .npy)"
        } else {
            ""
        };
        fail(
            None,
            format!(
                "not a readable .npz (zip) archive of {} bytes; truncated or not an .npz?{hint}: {e}",
                data.len()
            ),
        )
    })?;

    // Pass 1: every member's header (a few hundred bytes each, even when deflated).
    let mut arrays: Vec<Member> = Vec::new();
    let mut skipped: Vec<SkippedTensor> = Vec::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for index in 0..zip.len() {
        let mut file = zip
            .by_index(index)
            .map_err(|e| fail(None, format!("member #{index}: {e}")))?;
        if file.is_dir() {
            continue;
        }
        let member = file
            .name()
            .map_err(|e| {
                fail(
                    None,
                    format!("member #{index}: its name is not readable: {e}"),
                )
            })?
            .into_owned();
        let size = file.size();
        let header = read_header(&mut file, size).map_err(|d| fail(Some(&member), d))?;
        let name = member.strip_suffix(".npy").unwrap_or(&member).to_owned();
        if let Some(other) = seen.insert(name.clone(), member.clone()) {
            return Err(fail(
                Some(&member),
                format!("members {other} and {member} both give the array name {name}"),
            ));
        }
        let data_bytes = header.data_bytes().map_err(|d| fail(Some(&member), d))?;
        let want = header.data_offset as u64 + data_bytes.unwrap_or(0);
        if size < want {
            return Err(fail(
                Some(&member),
                format!(
                    "truncated: the header says {} ({}) of shape {:?}, {want} bytes with the \
                     header, but the member has {size} bytes",
                    header.dtype.name(),
                    header.descr,
                    header.shape,
                ),
            ));
        }
        match classify(&header).map_err(|d| fail(Some(&member), d))? {
            Use::Tensor => arrays.push(Member {
                index,
                member,
                name,
                header,
            }),
            Use::Skip => skipped.push(describe(&name, &header)),
        }
    }
    if seen.is_empty() {
        return Err(fail(None, "the archive holds no .npy arrays".to_owned()));
    }
    arrays.sort_by(|a, b| crate::natural_sort::natural_cmp(&a.name, &b.name));

    // Pass 2: lay the tensors out as one safetensors buffer and read each member's data
    // straight into its place.
    let mut report = ValidationReport::default();
    let (mut buf, ranges) = layout(&arrays).map_err(|d| fail(None, d))?;
    let mut trailing = Vec::new();
    for (a, &(start, end)) in arrays.iter().zip(&ranges) {
        let mut file = zip
            .by_index(a.index)
            .map_err(|e| fail(Some(&a.member), e.to_string()))?;
        let mut head = vec![0u8; a.header.data_offset];
        file.read_exact(&mut head)
            .map_err(|e| fail(Some(&a.member), format!("reading its header: {e}")))?;
        let dst = buf.get_mut(start..end).ok_or_else(|| {
            fail(
                Some(&a.member),
                "invariant: tensor range inside the buffer".to_owned(),
            )
        })?;
        read_data(&mut file, &a.header, dst).map_err(|d| fail(Some(&a.member), d))?;
        // Read to the end so that the zip reader checks the member's CRC.
        let rest = std::io::copy(&mut file, &mut std::io::sink())
            .map_err(|e| fail(Some(&a.member), format!("reading its data: {e}")))?;
        if rest > 0 {
            trailing.push(format!("{} ({rest} bytes)", a.member));
        }
    }
    if !trailing.is_empty() {
        report.note(format!(
            "ignored bytes after the array data of {} member(s), as numpy.load does: {}",
            trailing.len(),
            trailing.join(", ")
        ));
    }
    finish(path, "npz", sha256, data.len(), &mut buf, report, skipped)
}

/// Reads a `.npy` file: one array, named by the file stem.
///
/// # Errors
/// [`IngestError::FileNotFound`] / [`IngestError::Io`] / [`IngestError::EmptyFile`] for
/// the file; [`IngestError::Numpy`] naming the file for: bad magic (not a `.npy`
/// file), a truncated header or data, a header that does not parse, an `object`
/// (pickled) array, a rank-4 array whose dtype is not float16, float32 or float64.
pub fn read_npy(path: &Path) -> Result<NumpyModel> {
    let map = map_file(path)?;
    let data: &[u8] = &map;
    let sha256 = hex(&Sha256::digest(data));
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "array".to_owned());
    let fail = |detail: String| numpy_error(path, None, detail);
    let mut reader = data;
    let header = read_header(&mut reader, data.len() as u64).map_err(fail)?;
    let data_bytes = header.data_bytes().map_err(fail)?;
    let want = header.data_offset as u64 + data_bytes.unwrap_or(0);
    if (data.len() as u64) < want {
        return Err(fail(format!(
            "truncated: the header says {} ({}) of shape {:?}, {want} bytes with the header, \
             but the file has {} bytes",
            header.dtype.name(),
            header.descr,
            header.shape,
            data.len()
        )));
    }
    let mut report = ValidationReport::default();
    let mut skipped = Vec::new();
    let mut arrays = Vec::new();
    match classify(&header).map_err(fail)? {
        Use::Tensor => {
            let rest = data.len() as u64 - want;
            if rest > 0 {
                report.note(format!(
                    "ignored {rest} bytes after the array data, as numpy.load does"
                ));
            }
            arrays.push(Member {
                index: 0,
                member: name.clone(),
                name,
                header,
            });
        }
        Use::Skip => skipped.push(describe(&name, &header)),
    }
    let (mut buf, ranges) = layout(&arrays).map_err(fail)?;
    for (a, &(start, end)) in arrays.iter().zip(&ranges) {
        let mut body = data.get(a.header.data_offset..).unwrap_or(&[]);
        let dst = buf
            .get_mut(start..end)
            .ok_or_else(|| fail("invariant: tensor range inside the buffer".to_owned()))?;
        read_data(&mut body, &a.header, dst).map_err(fail)?;
    }
    finish(path, "npy", sha256, data.len(), &mut buf, report, skipped)
}

/// Builds the store's [`ModelInput`] for a NumPy file: [`normalise`](crate::normalise())
/// of its [`RawModel`] (layer order, card, overrides, vocabulary exactly as for
/// safetensors), with `source_format` `npz` / `npy` and the file's own hash and size.
///
/// # Errors
/// As [`normalise`](crate::normalise()); [`IngestError::NoConvKernels`] also lists the
/// arrays that were skipped because they are not rank 4.
pub fn normalise_numpy<'a>(
    model: &'a NumpyModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
) -> Result<ModelInput<'a>> {
    normalise_numpy_with(model, card, overrides, vocab, &NormaliseOptions::default())
}

/// [`normalise_numpy`] with options (e.g. [`NormaliseOptions::allow_empty`]).
///
/// # Errors
/// As [`normalise_numpy`].
pub fn normalise_numpy_with<'a>(
    model: &'a NumpyModel,
    card: Option<&ModelCard>,
    overrides: &ModelOverrides,
    vocab: &VocabExtra,
    opts: &NormaliseOptions,
) -> Result<ModelInput<'a>> {
    let skipped = &model.report.skipped;
    let raw = normalise_with(&model.raw, card, overrides, vocab, opts);
    let mut input = raw.map_err(|e| match e {
        IngestError::NoConvKernels {
            path,
            layout,
            found,
        } if !skipped.is_empty() => {
            let described: Vec<String> = skipped.iter().map(SkippedTensor::describe).collect();
            let others = list(&described, 8);
            let found = if model.raw.is_empty() {
                others
            } else {
                format!("{found}, {others}")
            };
            IngestError::NoConvKernels {
                path,
                layout,
                found,
            }
        }
        e => e,
    })?;
    input.meta.source_format = model.format.to_owned();
    input.meta.source_sha256.clone_from(&model.sha256);
    input.meta.source_bytes = model.file_bytes;
    input.meta.report.prepend(model.report.clone());
    Ok(input)
}

// ------------------------------------------------------------------------- internals

fn numpy_error(path: &Path, member: Option<&str>, detail: String) -> IngestError {
    IngestError::Numpy {
        path: path.to_owned(),
        member: member.map(str::to_owned),
        detail,
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
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
    // SAFETY: read-only private map, as in `safetensors::read_safetensors`: we rely on
    // the file not being truncated or rewritten while it is read; the hash is taken from
    // the same mapped bytes that are decoded.
    unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .map_err(|e| io_error(path, "memory-mapping", e))
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

fn list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(", ... ({} in all)", items.len()));
    }
    s
}

/// One array member to read.
struct Member {
    /// Zip index (0 for a `.npy` file).
    index: usize,
    /// Member name in the archive (the file stem for a `.npy` file).
    member: String,
    /// Tensor name.
    name: String,
    header: Header,
}

/// The element type a `.npy` header declares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Dtype {
    /// `descr` is a string: byte order, kind character, size (`<f4`, `|i1`, `>c16`).
    Simple {
        big_endian: bool,
        kind: char,
        size: usize,
    },
    /// `descr` is a string numpy writes for types with units or odd sizes
    /// (`<M8[ns]`, `<f16` long double): kept only to name it.
    Other(String),
    /// `descr` is a list of fields: a structured dtype.
    Structured,
}

impl Dtype {
    fn parse(descr: &str) -> Dtype {
        let mut chars = descr.chars().peekable();
        let big_endian = match chars.peek() {
            Some('>') => {
                chars.next();
                true
            }
            Some('<' | '|' | '=') => {
                chars.next();
                false
            }
            _ => false,
        };
        let Some(kind) = chars.next() else {
            return Dtype::Other(descr.to_owned());
        };
        let digits: String = chars.collect();
        if kind == 'O' && digits.is_empty() {
            // numpy writes object arrays as `|O` (pointers)
            return Dtype::Simple {
                big_endian,
                kind,
                size: 8,
            };
        }
        match digits.parse::<usize>() {
            Ok(size) if "fiubcSUVOmM".contains(kind) => Dtype::Simple {
                big_endian,
                kind,
                size,
            },
            _ => Dtype::Other(descr.to_owned()),
        }
    }

    /// NumPy's name of the type (`float32`, `int8`, `object`, ...).
    fn name(&self) -> String {
        match self {
            Dtype::Simple { kind, size, .. } => match kind {
                'f' => format!("float{}", size * 8),
                'i' => format!("int{}", size * 8),
                'u' => format!("uint{}", size * 8),
                'b' => "bool".to_owned(),
                'c' => format!("complex{}", size * 8),
                'S' => format!("bytes{size}"),
                'U' => format!("str{size}"),
                'V' => format!("void{}", size * 8),
                'O' => "object".to_owned(),
                'M' => "datetime64".to_owned(),
                'm' => "timedelta64".to_owned(),
                _ => format!("{kind}{size}"),
            },
            Dtype::Other(d) => d.clone(),
            Dtype::Structured => "structured".to_owned(),
        }
    }

    /// Bytes per element, if fixed.
    fn item_size(&self) -> Option<usize> {
        match self {
            Dtype::Simple {
                kind: 'U', size, ..
            } => size.checked_mul(4),
            Dtype::Simple { kind: 'O', .. } => None,
            Dtype::Simple { size, .. } => Some(*size),
            Dtype::Other(_) | Dtype::Structured => None,
        }
    }

    /// The safetensors dtype of a float type filterdb stores.
    fn float(&self) -> Option<safetensors::Dtype> {
        match self {
            Dtype::Simple {
                kind: 'f', size, ..
            } => match size {
                2 => Some(safetensors::Dtype::F16),
                4 => Some(safetensors::Dtype::F32),
                8 => Some(safetensors::Dtype::F64),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A parsed `.npy` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    /// `descr` as written (a list of fields prints as `[...]`).
    descr: String,
    dtype: Dtype,
    fortran_order: bool,
    shape: Vec<usize>,
    /// Bytes before the data: magic, version, length and the header text.
    data_offset: usize,
}

impl Header {
    fn elements(&self) -> std::result::Result<usize, String> {
        self.shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| format!("the shape {:?} overflows", self.shape))
    }

    /// Bytes of data, if the dtype has a fixed size.
    fn data_bytes(&self) -> std::result::Result<Option<u64>, String> {
        let n = self.elements()?;
        Ok(match self.dtype.item_size() {
            Some(s) => Some(
                n.checked_mul(s)
                    .ok_or_else(|| format!("the shape {:?} overflows", self.shape))?
                    as u64,
            ),
            None => None,
        })
    }
}

/// What to do with an array.
enum Use {
    /// A rank-4 float array: a convolution candidate.
    Tensor,
    /// Not rank 4: not a convolution weight, skipped (reported).
    Skip,
}

fn classify(h: &Header) -> std::result::Result<Use, String> {
    if matches!(h.dtype, Dtype::Simple { kind: 'O', .. }) {
        return Err(format!(
            "an array of dtype object ({}, shape {:?}) holds pickled Python objects, which \
             filterdb does not read; save numeric arrays only",
            h.descr, h.shape
        ));
    }
    if h.shape.len() != 4 {
        return Ok(Use::Skip);
    }
    if h.dtype.float().is_none() {
        return Err(format!(
            "array of dtype {} ({}) and shape {:?}; convolution weights must be float16, \
             float32 or float64",
            h.dtype.name(),
            h.descr,
            h.shape
        ));
    }
    Ok(Use::Tensor)
}

fn describe(name: &str, h: &Header) -> SkippedTensor {
    SkippedTensor {
        tensor: name.to_owned(),
        shape: h.shape.clone(),
        dtype: h.dtype.name(),
        reason: SKIP_NOT_RANK4.to_owned(),
    }
}

/// Reads the magic, version, length and header text from `r` (at the start of an
/// `.npy` stream of `size` bytes) and parses it. Errors are messages without the path.
fn read_header(r: &mut impl Read, size: u64) -> std::result::Result<Header, String> {
    let truncated =
        |what: &str| format!("truncated: it ends inside the .npy {what} ({size} bytes in all)");
    let mut pre = [0u8; 8];
    match read_full(r, &mut pre) {
        Ok(()) => {}
        Err(Short::Io(e)) => return Err(format!("reading the .npy header: {e}")),
        Err(Short::Eof(n)) => {
            let k = n.min(MAGIC.len());
            return Err(if pre[..k] == MAGIC[..k] {
                truncated("magic and version")
            } else {
                bad_magic(&pre[..n])
            });
        }
    }
    if pre[..6] != MAGIC[..] {
        return Err(bad_magic(&pre));
    }
    let (major, minor) = (pre[6], pre[7]);
    let (len_bytes, utf8) = match major {
        1 => (2, false),
        2 => (4, false),
        3 => (4, true),
        _ => {
            return Err(format!(
                ".npy format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)"
            ));
        }
    };
    let mut len_buf = [0u8; 4];
    read_full(r, &mut len_buf[..len_bytes]).map_err(|e| match e {
        Short::Eof(_) => truncated("header length"),
        Short::Io(e) => format!("reading the .npy header: {e}"),
    })?;
    let hlen = u32::from_le_bytes(len_buf) as usize;
    if hlen > MAX_HEADER {
        return Err(format!(
            "the .npy header declares {hlen} bytes, over the {MAX_HEADER}-byte limit (corrupt file?)"
        ));
    }
    let data_offset = 8 + len_bytes + hlen;
    if (data_offset as u64) > size {
        return Err(format!(
            "truncated: the .npy header declares {hlen} bytes, but only {} follow its length",
            size.saturating_sub((8 + len_bytes) as u64)
        ));
    }
    let mut text = vec![0u8; hlen];
    read_full(r, &mut text).map_err(|e| match e {
        Short::Eof(_) => truncated("header"),
        Short::Io(e) => format!("reading the .npy header: {e}"),
    })?;
    let text = if utf8 {
        String::from_utf8(text).map_err(|_| "the .npy header is not UTF-8".to_owned())?
    } else {
        // Version 1 and 2 headers are latin-1; every byte maps to the char of that code.
        text.iter().map(|&b| char::from(b)).collect()
    };
    let mut h = parse_header_text(&text)
        .map_err(|e| format!("the .npy header {:?} does not parse: {e}", text.trim_end()))?;
    h.data_offset = data_offset;
    Ok(h)
}

fn bad_magic(found: &[u8]) -> String {
    format!("not a NumPy .npy array: it starts with {found:02x?}, not the magic \\x93NUMPY")
}

enum Short {
    Eof(usize),
    Io(std::io::Error),
}

/// `read_exact` that says how many bytes it got before the end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::result::Result<(), Short> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Err(Short::Eof(got)),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Short::Io(e)),
        }
    }
    Ok(())
}

/// Lays the tensors out as a safetensors buffer: returns the buffer (header written,
/// data zeroed) and each tensor's byte range in it.
/// A safetensors buffer and each tensor's byte range in it.
type Layout = (Vec<u8>, Vec<(usize, usize)>);

fn layout(arrays: &[Member]) -> std::result::Result<Layout, String> {
    let mut header = serde_json::Map::new();
    let mut offsets = Vec::with_capacity(arrays.len());
    let mut end = 0usize;
    for a in arrays {
        let dtype = a
            .header
            .dtype
            .float()
            .ok_or_else(|| format!("invariant: {} is a float array", a.member))?;
        let n = a
            .header
            .data_bytes()?
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("member {}: array too large", a.member))?;
        let start = end;
        end = start
            .checked_add(n)
            .ok_or_else(|| "arrays too large".to_owned())?;
        header.insert(
            a.name.clone(),
            serde_json::json!({
                "dtype": dtype.to_string(),
                "shape": a.header.shape,
                "data_offsets": [start, end],
            }),
        );
        offsets.push((start, end));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| format!("invariant: JSON of the tensor table: {e}"))?;
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let data_start = 8 + h.len();
    let total = data_start
        .checked_add(end)
        .ok_or_else(|| "arrays too large".to_owned())?;
    let mut buf = vec![0u8; total];
    buf[..8].copy_from_slice(&(h.len() as u64).to_le_bytes());
    buf[8..data_start].copy_from_slice(&h);
    let ranges = offsets
        .into_iter()
        .map(|(s, e)| (data_start + s, data_start + e))
        .collect();
    Ok((buf, ranges))
}

/// Reads one array's data from `r` into `dst` as little-endian, C-order elements.
fn read_data(r: &mut impl Read, h: &Header, dst: &mut [u8]) -> std::result::Result<(), String> {
    let Dtype::Simple {
        big_endian, size, ..
    } = h.dtype
    else {
        return Err("invariant: a simple dtype".to_owned());
    };
    let total = dst.len();
    let eof = |got: usize| {
        format!(
            "truncated: its data ends after {got} of {total} bytes ({} {:?})",
            h.dtype.name(),
            h.shape
        )
    };
    let io = |e: std::io::Error| format!("reading its data: {e}");
    if h.fortran_order && h.shape.iter().filter(|&&d| d > 1).count() > 1 {
        let mut src = vec![0u8; dst.len()];
        read_full(r, &mut src).map_err(|e| match e {
            Short::Eof(n) => eof(n),
            Short::Io(e) => io(e),
        })?;
        fortran_to_c(&src, dst, &h.shape, size);
    } else {
        // C order, or Fortran order with at most one axis longer than 1 (the same bytes)
        read_full(r, dst).map_err(|e| match e {
            Short::Eof(n) => eof(n),
            Short::Io(e) => io(e),
        })?;
    }
    if big_endian && size > 1 {
        for item in dst.chunks_exact_mut(size) {
            item.reverse();
        }
    }
    Ok(())
}

/// Copies a Fortran-order (first index fastest) array of `item`-byte elements into C
/// order (last index fastest).
fn fortran_to_c(src: &[u8], dst: &mut [u8], shape: &[usize], item: usize) {
    let rank = shape.len();
    if rank == 0 || dst.is_empty() {
        dst.copy_from_slice(src);
        return;
    }
    // Fortran strides, in elements.
    let mut fstride = vec![1usize; rank];
    for k in 1..rank {
        fstride[k] = fstride[k - 1] * shape[k - 1];
    }
    let last = rank - 1;
    let inner = shape[last];
    let mut idx = vec![0usize; rank];
    let mut out = 0usize;
    loop {
        // one C-order row: the last index runs, the others are fixed
        let base: usize = idx[..last]
            .iter()
            .zip(&fstride[..last])
            .map(|(i, s)| i * s)
            .sum();
        for j in 0..inner {
            let s = (base + j * fstride[last]) * item;
            dst[out..out + item].copy_from_slice(&src[s..s + item]);
            out += item;
        }
        // odometer over the leading indices
        let mut k = last;
        loop {
            if k == 0 {
                return;
            }
            k -= 1;
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

fn finish(
    path: &Path,
    format: &'static str,
    sha256: String,
    file_bytes: usize,
    buf: &mut Vec<u8>,
    mut report: ValidationReport,
    skipped: Vec<SkippedTensor>,
) -> Result<NumpyModel> {
    report.skipped.splice(0..0, skipped);
    let raw = RawModel::from_bytes(path, std::mem::take(buf))?;
    Ok(NumpyModel {
        raw,
        format,
        sha256,
        file_bytes: file_bytes as u64,
        report,
    })
}

// ------------------------------------------------------------ the header dict literal

/// The Python literals a `.npy` header uses.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Int(u64),
    Bool(bool),
    None,
    Seq(Vec<Lit>),
    Dict(Vec<(Lit, Lit)>),
}

/// Parses the header dict: `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header_text(text: &str) -> std::result::Result<Header, String> {
    let mut p = LitParser {
        s: text.as_bytes(),
        i: 0,
    };
    let lit = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the dict at byte {}", p.i));
    }
    let Lit::Dict(items) = lit else {
        return Err("expected a dict".to_owned());
    };
    let get = |key: &str| {
        items
            .iter()
            .find(|(k, _)| matches!(k, Lit::Str(s) if s == key))
            .map(|(_, v)| v)
            .ok_or_else(|| format!("no '{key}' key"))
    };
    let (descr, dtype) = match get("descr")? {
        Lit::Str(s) => (s.clone(), Dtype::parse(s)),
        Lit::Seq(_) => ("[...]".to_owned(), Dtype::Structured),
        other => return Err(format!("'descr' is {other:?}, expected a string")),
    };
    let fortran_order = match get("fortran_order")? {
        Lit::Bool(b) => *b,
        other => {
            return Err(format!(
                "'fortran_order' is {other:?}, expected True or False"
            ));
        }
    };
    let shape = match get("shape")? {
        Lit::Seq(v) => v
            .iter()
            .map(|d| match d {
                Lit::Int(n) => usize::try_from(*n).map_err(|_| format!("dimension {n} too large")),
                other => Err(format!("a dimension is {other:?}, expected an integer")),
            })
            .collect::<std::result::Result<Vec<usize>, String>>()?,
        other => return Err(format!("'shape' is {other:?}, expected a tuple")),
    };
    Ok(Header {
        descr,
        dtype,
        fortran_order,
        shape,
        data_offset: 0,
    })
}

struct LitParser<'s> {
    s: &'s [u8],
    i: usize,
}

impl LitParser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.s.get(self.i).copied()
    }

    fn value(&mut self) -> std::result::Result<Lit, String> {
        match self.peek() {
            Some(b'{') => self.dict(),
            Some(b'(') => self.seq(b')'),
            Some(b'[') => self.seq(b']'),
            Some(q @ (b'\'' | b'"')) => self.string(q),
            Some(c) if c.is_ascii_digit() => self.int(),
            Some(c) if c.is_ascii_alphabetic() => self.word(),
            Some(c) => Err(format!("unexpected {:?} at byte {}", char::from(c), self.i)),
            None => Err("unexpected end".to_owned()),
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", char::from(c), self.i))
        }
    }

    fn dict(&mut self) -> std::result::Result<Lit, String> {
        self.expect(b'{')?;
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(b'}') {
                self.i += 1;
                return Ok(Lit::Dict(items));
            }
            let k = self.value()?;
            self.expect(b':')?;
            let v = self.value()?;
            items.push((k, v));
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {}
                _ => return Err(format!("expected ',' or '}}' at byte {}", self.i)),
            }
        }
    }

    fn seq(&mut self, close: u8) -> std::result::Result<Lit, String> {
        self.i += 1; // the opening bracket
        let mut items = Vec::new();
        loop {
            if self.peek() == Some(close) {
                self.i += 1;
                return Ok(Lit::Seq(items));
            }
            items.push(self.value()?);
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {}
                _ => {
                    return Err(format!(
                        "expected ',' or {:?} at byte {}",
                        char::from(close),
                        self.i
                    ));
                }
            }
        }
    }

    fn string(&mut self, quote: u8) -> std::result::Result<Lit, String> {
        let start = self.i;
        self.i += 1;
        let mut out = Vec::new();
        while let Some(&c) = self.s.get(self.i) {
            self.i += 1;
            if c == quote {
                return Ok(Lit::Str(String::from_utf8_lossy(&out).into_owned()));
            }
            if c == b'\\'
                && let Some(&e) = self.s.get(self.i)
            {
                self.i += 1;
                out.push(e);
                continue;
            }
            out.push(c);
        }
        Err(format!("unterminated string starting at byte {start}"))
    }

    fn int(&mut self) -> std::result::Result<Lit, String> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or("");
        let n = digits
            .parse::<u64>()
            .map_err(|_| format!("integer {digits} too large"))?;
        // Python 2 wrote long integers with an L suffix: (3L, 4L)
        if matches!(self.s.get(self.i), Some(b'L' | b'l')) {
            self.i += 1;
        }
        Ok(Lit::Int(n))
    }

    fn word(&mut self) -> std::result::Result<Lit, String> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_alphanumeric() {
            self.i += 1;
        }
        match &self.s[start..self.i] {
            b"True" => Ok(Lit::Bool(true)),
            b"False" => Ok(Lit::Bool(false)),
            b"None" => Ok(Lit::None),
            w => Err(format!(
                "unexpected word {:?} at byte {start}",
                String::from_utf8_lossy(w)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    use proptest::prelude::*;
    use zip::CompressionMethod;
    use zip::write::SimpleFileOptions;

    /// An `.npy` stream as `numpy.save` writes it (version 1.0, header padded to 64).
    fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
        let shape = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let fo = if fortran { "True" } else { "False" };
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': {fo}, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&u16::try_from(h.len()).unwrap().to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    /// An `.npz` of `(member name, bytes)`, deflated or stored.
    fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let method = if deflate {
            CompressionMethod::Deflated
        } else {
            CompressionMethod::Stored
        };
        let opts = SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            w.start_file(*name, opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn vals(n: usize, salt: u32) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(salt);
                match x % 7 {
                    0 => -0.0,
                    1 => 1.5e-7,
                    _ => (f64::from(x % 2001) - 1000.0) / 777.0,
                }
            })
            .collect()
    }

    /// Little-endian bytes of `v` as `kind` ('e' f16, 'f' f32, 'd' f64), big-endian if `be`.
    fn bytes_of(v: &[f64], kind: char, be: bool) -> Vec<u8> {
        let mut out = Vec::new();
        for &x in v {
            let mut b: Vec<u8> = match kind {
                'e' => half::f16::from_f64(x).to_le_bytes().to_vec(),
                'f' => (x as f32).to_le_bytes().to_vec(),
                _ => x.to_le_bytes().to_vec(),
            };
            if be {
                b.reverse();
            }
            out.extend_from_slice(&b);
        }
        out
    }

    /// The Fortran-order element list of a C-order array (naive index arithmetic).
    fn to_fortran<T: Copy>(c: &[T], shape: &[usize]) -> Vec<T> {
        let n = c.len();
        let mut out = Vec::with_capacity(n);
        for f in 0..n {
            // Fortran linear index f -> multi-index (first fastest) -> C linear index
            let mut rem = f;
            let mut idx = vec![0; shape.len()];
            for (k, &d) in shape.iter().enumerate() {
                idx[k] = rem % d;
                rem /= d;
            }
            let mut ci = 0;
            for (k, &d) in shape.iter().enumerate() {
                ci = ci * d + idx[k];
            }
            out.push(c[ci]);
        }
        out
    }

    fn tensor_bytes(m: &NumpyModel, name: &str) -> Vec<u8> {
        m.raw()
            .tensors()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
            .bytes
            .to_vec()
    }

    #[test]
    fn reads_stored_and_deflated_archives() {
        let dir = tempfile::tempdir().unwrap();
        let w10 = vals(4 * 3 * 9, 1);
        let w2 = vals(3 * 2 * 9, 2);
        let members = [
            (
                "features.10.weight.npy",
                npy("<f4", false, &[4, 3, 3, 3], &bytes_of(&w10, 'f', false)),
            ),
            (
                "features.2.weight.npy",
                npy("<f4", false, &[3, 2, 3, 3], &bytes_of(&w2, 'f', false)),
            ),
            (
                "features.2.bias.npy",
                npy("<f4", false, &[3], &bytes_of(&vals(3, 3), 'f', false)),
            ),
            (
                "bn.num_batches_tracked.npy",
                npy("<i8", false, &[], &[7, 0, 0, 0, 0, 0, 0, 0]),
            ),
        ];
        for deflate in [false, true] {
            let bytes = npz(&members, deflate);
            let p = write(dir.path(), &format!("m{deflate}.npz"), &bytes);
            let m = read_numpy(&p).unwrap();
            assert_eq!(m.format(), "npz");
            assert_eq!(m.sha256(), hex(&Sha256::digest(&bytes)));
            assert_eq!(m.file_bytes(), bytes.len() as u64);
            let names: Vec<&str> = m.raw().tensors().map(|t| t.name).collect();
            assert_eq!(names, ["features.2.weight", "features.10.weight"]);
            assert_eq!(
                tensor_bytes(&m, "features.10.weight"),
                bytes_of(&w10, 'f', false)
            );
            assert_eq!(
                tensor_bytes(&m, "features.2.weight"),
                bytes_of(&w2, 'f', false)
            );
            let t = m.raw().tensors().next().unwrap();
            assert_eq!(t.shape, [3, 2, 3, 3]);
            assert_eq!(t.source_dtype, Some(crate::SourceDtype::F32));
            let skipped: Vec<String> = m
                .report()
                .skipped
                .iter()
                .map(SkippedTensor::describe)
                .collect();
            assert_eq!(
                skipped,
                [
                    "features.2.bias [3] float32",
                    "bn.num_batches_tracked [] int64"
                ],
                "{:?}",
                m.report()
            );
            assert!(
                m.report()
                    .skipped
                    .iter()
                    .all(|t| t.reason == SKIP_NOT_RANK4)
            );
        }
    }

    #[test]
    fn every_float_dtype_byte_order_and_memory_order() {
        let dir = tempfile::tempdir().unwrap();
        let shape = [3, 2, 3, 3];
        let v = vals(54, 9);
        for (kind, size, st) in [
            ('e', 2, safetensors::Dtype::F16),
            ('f', 4, safetensors::Dtype::F32),
            ('d', 8, safetensors::Dtype::F64),
        ] {
            let want = bytes_of(&v, kind, false);
            for be in [false, true] {
                for fortran in [false, true] {
                    let elems = if fortran {
                        to_fortran(&v, &shape)
                    } else {
                        v.clone()
                    };
                    let descr = format!("{}f{size}", if be { '>' } else { '<' });
                    let data = npy(&descr, fortran, &shape, &bytes_of(&elems, kind, be));
                    let name = format!("w_{kind}_{be}_{fortran}");
                    let p = write(dir.path(), &format!("{name}.npy"), &data);
                    let m = read_numpy(&p).unwrap();
                    assert_eq!(m.format(), "npy");
                    let t = m.raw().tensors().next().unwrap();
                    assert_eq!(t.name, name, "a .npy array is named by the file stem");
                    assert_eq!(t.dtype, st);
                    assert_eq!(t.bytes, &want[..], "{descr} fortran={fortran}");
                    // the same array inside an archive, deflated
                    let z = npz(&[("w.npy", data)], true);
                    let m = read_numpy(&write(dir.path(), &format!("{name}.npz"), &z)).unwrap();
                    assert_eq!(tensor_bytes(&m, "w"), want, "{descr} fortran={fortran} npz");
                }
            }
        }
    }

    #[test]
    fn header_versions_and_spellings() {
        let h = parse_header_text(
            "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (64L, 3L, 3L, 3L)}",
        )
        .unwrap();
        assert_eq!(h.shape, [64, 3, 3, 3]);
        assert_eq!(h.dtype.float(), Some(safetensors::Dtype::F32));
        let h = parse_header_text("{'descr': '|u1', 'fortran_order': True, 'shape': (), }  \n")
            .unwrap();
        assert!(h.shape.is_empty() && h.fortran_order);
        assert_eq!(h.dtype.name(), "uint8");
        let h = parse_header_text(
            "{'descr': [('x', '<f4'), ('y', '<i8', (2,))], 'fortran_order': False, 'shape': (5,), }",
        )
        .unwrap();
        assert_eq!(h.dtype, Dtype::Structured);
        assert_eq!(Dtype::parse("|O").name(), "object");
        assert_eq!(Dtype::parse("<M8[ns]").name(), "<M8[ns]");
        assert_eq!(Dtype::parse("<f16").float(), None);
        for bad in [
            "{'descr': '<f4', 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)",
            "['descr']",
        ] {
            assert!(parse_header_text(bad).is_err(), "{bad}");
        }
        // version 2.0: a 4-byte header length
        let v1 = npy(
            "<f4",
            false,
            &[1, 1, 3, 3],
            &bytes_of(&vals(9, 1), 'f', false),
        );
        let hlen = usize::from(u16::from_le_bytes([v1[8], v1[9]]));
        let mut v2 = MAGIC.to_vec();
        v2.extend_from_slice(&[2, 0]);
        v2.extend_from_slice(&u32::try_from(hlen).unwrap().to_le_bytes());
        v2.extend_from_slice(&v1[10..]);
        let dir = tempfile::tempdir().unwrap();
        let m = read_numpy(&write(dir.path(), "v2.npy", &v2)).unwrap();
        assert_eq!(tensor_bytes(&m, "v2"), bytes_of(&vals(9, 1), 'f', false));
    }

    fn err_of(name: &str, bytes: &[u8]) -> (std::path::PathBuf, IngestError, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), name, bytes);
        let e = read_numpy(&p).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        (p, e, msg)
    }

    fn conv() -> Vec<u8> {
        npy(
            "<f4",
            false,
            &[2, 1, 3, 3],
            &bytes_of(&vals(18, 4), 'f', false),
        )
    }

    #[test]
    fn missing_and_empty_files() {
        let e = read_numpy(Path::new("/nonexistent/m.npz")).unwrap_err();
        assert!(matches!(e, IngestError::FileNotFound { .. }), "{e:?}");
        let (_, e, _) = err_of("empty.npz", b"");
        assert!(matches!(e, IngestError::EmptyFile { .. }), "{e:?}");
        let (_, e, _) = err_of("empty.npy", b"");
        assert!(matches!(e, IngestError::EmptyFile { .. }), "{e:?}");
    }

    #[test]
    fn bad_magic() {
        let (_, e, msg) = err_of("m.npy", b"PK\x03\x04 this is a zip, not an npy");
        assert!(
            matches!(e, IngestError::Numpy { member: None, .. }),
            "{e:?}"
        );
        assert!(msg.contains("not a NumPy .npy array"), "{msg}");
        let z = npz(
            &[("w.npy", conv()), ("README.txt", b"hello".to_vec())],
            true,
        );
        let (_, e, msg) = err_of("m.npz", &z);
        assert!(
            matches!(&e, IngestError::Numpy { member: Some(m), .. } if m == "README.txt"),
            "{e:?}"
        );
        assert!(
            msg.contains("member README.txt: not a NumPy .npy array"),
            "{msg}"
        );
        let (_, _, msg) = err_of("single.npz", &conv());
        assert!(msg.contains("not a readable .npz (zip) archive"), "{msg}");
        assert!(msg.contains("name it .npy"), "{msg}");
    }

    #[test]
    fn truncated_files() {
        let full = conv();
        let (_, _, msg) = err_of("a.npy", &full[..4]);
        assert!(
            msg.contains("truncated: it ends inside the .npy magic"),
            "{msg}"
        );
        let (_, _, msg) = err_of("b.npy", &full[..40]);
        assert!(msg.contains("truncated: the .npy header declares"), "{msg}");
        let (_, _, msg) = err_of("c.npy", &full[..full.len() - 5]);
        assert!(msg.contains("truncated: the header says float32"), "{msg}");
        assert!(msg.contains("[2, 1, 3, 3]"), "{msg}");
        // an archive cut short loses its central directory
        let z = npz(&[("w.npy", conv())], true);
        let (_, _, msg) = err_of("d.npz", &z[..z.len() - 30]);
        assert!(msg.contains("truncated or not an .npz?"), "{msg}");
        // a member whose data is shorter than its header says
        let z = npz(&[("w.npy", full[..full.len() - 8].to_vec())], false);
        let (_, e, msg) = err_of("e.npz", &z);
        assert!(
            matches!(&e, IngestError::Numpy { member: Some(m), .. } if m == "w.npy"),
            "{e:?}"
        );
        assert!(msg.contains("truncated"), "{msg}");
    }

    #[test]
    fn corrupt_member_fails_its_crc() {
        let data = conv();
        let mut z = npz(&[("w.npy", data.clone())], false);
        // flip one weight byte of the stored member
        let at = z.windows(data.len()).position(|w| w == &data[..]).unwrap() + data.len() - 3;
        z[at] ^= 0x55;
        let (_, _, msg) = err_of("crc.npz", &z);
        assert!(msg.contains("member w.npy"), "{msg}");
        assert!(msg.to_lowercase().contains("checksum"), "{msg}");
    }

    #[test]
    fn unsupported_dtypes_and_duplicates() {
        let i8conv = npy("|i1", false, &[2, 1, 3, 3], &[1; 18]);
        let (_, _, msg) = err_of("i8.npz", &npz(&[("conv.weight.npy", i8conv.clone())], true));
        assert!(msg.contains("member conv.weight.npy"), "{msg}");
        assert!(msg.contains("dtype int8 (|i1)"), "{msg}");
        assert!(msg.contains("float16, float32 or float64"), "{msg}");
        let (_, _, msg) = err_of("i8.npy", &i8conv);
        assert!(msg.contains("dtype int8"), "{msg}");
        let obj = npy("|O", false, &[2], &[0x80, 0x04, 0x95, 0, 0, 0, 0, 0]);
        let (_, _, msg) = err_of(
            "obj.npz",
            &npz(&[("w.npy", conv()), ("meta.npy", obj)], true),
        );
        assert!(msg.contains("member meta.npy"), "{msg}");
        assert!(msg.contains("dtype object"), "{msg}");
        assert!(msg.contains("pickled"), "{msg}");
        let c8 = npy("<c8", false, &[1, 1, 3, 3], &[0; 72]);
        let (_, _, msg) = err_of("c.npz", &npz(&[("w.npy", c8)], false));
        assert!(msg.contains("complex64"), "{msg}");
        let (_, _, msg) = err_of("dup.npz", &npz(&[("w.npy", conv()), ("w", conv())], false));
        assert!(msg.contains("both give the array name w"), "{msg}");
        let (_, _, msg) = err_of("none.npz", &npz(&[], false));
        assert!(msg.contains("no .npy arrays"), "{msg}");
        let (_, _, msg) = err_of("v9.npy", &[MAGIC.as_slice(), &[9, 0, 0, 0]].concat());
        assert!(msg.contains("version 9.0 is not supported"), "{msg}");
    }

    #[test]
    fn normalise_uses_the_file_hash_and_format() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = npz(
            &[
                (
                    "b.npy",
                    npy("<f4", false, &[2], &bytes_of(&vals(2, 1), 'f', false)),
                ),
                ("w.npy", conv()),
            ],
            true,
        );
        let p = write(dir.path(), "net.npz", &bytes);
        let m = read_numpy(&p).unwrap();
        let input =
            normalise_numpy(&m, None, &ModelOverrides::default(), &VocabExtra::default()).unwrap();
        assert_eq!(input.meta.name, "net");
        assert_eq!(input.meta.source_format, "npz");
        assert_eq!(input.meta.source_sha256, hex(&Sha256::digest(&bytes)));
        assert_eq!(input.meta.source_bytes, bytes.len() as u64);
        assert_eq!(
            input.meta.report.skipped.len(),
            1,
            "{:?}",
            input.meta.report
        );
        assert_eq!(input.meta.report.skipped[0].reason, SKIP_NOT_RANK4);
        assert_eq!(input.layers.len(), 1);
        assert_eq!(input.layers[0].layer_name, "w");

        // no conv: the error lists the arrays that were skipped
        let only_bias = npz(&[("b.npy", npy("<f8", false, &[4, 9], &[0; 288]))], false);
        let m = read_numpy(&write(dir.path(), "bias.npz", &only_bias)).unwrap();
        let e = normalise_numpy(&m, None, &ModelOverrides::default(), &VocabExtra::default())
            .unwrap_err();
        assert!(matches!(e, IngestError::NoConvKernels { .. }), "{e:?}");
        assert!(e.to_string().contains("b [4, 9] float64"), "{e}");
    }

    proptest! {
        /// `fortran_to_c` equals the naive index arithmetic for any shape and item size.
        #[test]
        fn fortran_to_c_matches_naive(
            shape in proptest::collection::vec(1usize..5, 0..5),
            item in prop_oneof![Just(1usize), Just(2), Just(4), Just(8)],
        ) {
            let n: usize = shape.iter().product();
            let c: Vec<u8> = (0..n * item).map(|i| (i % 251) as u8).collect();
            let c_items: Vec<&[u8]> = c.chunks(item).collect();
            let f: Vec<u8> = to_fortran(&c_items, &shape).concat();
            let mut back = vec![0u8; n * item];
            fortran_to_c(&f, &mut back, &shape, item);
            prop_assert_eq!(back, c);
        }
    }
}
