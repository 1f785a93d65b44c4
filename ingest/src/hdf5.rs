//! Reading the CNN Filter DB release's HDF5 file: `/filters` in row blocks, `/meta` as a table.
//!
//! The release (Gavrikov & Keuper, CVPR 2022) is one HDF5 file holding
//!
//! - `/filters` (some copies: `/filter`): an N x 9 float32 array, row = filter id. It is
//!   read in hyperslabs of whole rows ([`ReleaseFile::read_rows`]), never as a whole;
//! - `/meta`: a pandas DataFrame, one row per (model, conv layer). Three forms are read:
//!   - pandas' `table` format (PyTables): a compound dataset `/meta/table` whose fields are
//!     `index` (pandas' row index), one field per data column (the release's MultiIndex
//!     levels `model_id`, `conv_depth`, `conv_depth_norm` are stored so) and
//!     `values_block_N` arrays holding several columns of one type. Field types and string
//!     widths depend on the data, so the table is decoded generically from the dataset's
//!     type descriptor ([`hdf5_metno::Datatype::to_descriptor`]). The column names of a
//!     block are in the table's attribute `values_block_N_kind`, a list of strings that
//!     PyTables pickles with pickle protocol 0; [`unpickle_str_list`] reads exactly that
//!     shape (a list of strings) and refuses anything else, so no Python object is ever
//!     evaluated. A string equal to the block's `values_block_N_nan_rep` (pandas writes
//!     `nan` for missing strings) is read as missing;
//!   - a 1-D `uint8` dataset holding the bytes of a CSV file (a 2021 version of the paper's
//!     notebook read `/meta` so);
//!   - pandas' default `fixed` format, which pickles string columns as Python objects that
//!     only Python can read: reading it fails with [`IngestError::PickledMeta`], which
//!     gives the two lines of pandas that export `/meta` for `--meta`.
//!
//! [`read_meta_file`] reads such an export (Parquet or CSV). Every form becomes the same
//! [`MetaTable`], which [`crate::cnnfilterdb`] maps onto filterdb's models and layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hdf5_metno::types::{FloatSize, IntSize, TypeDescriptor};
use hdf5_metno::{Dataset, Datatype, Group, Location, Selection};
use hdf5_metno_sys::{h5a::H5Aread, h5d::H5Dread, h5p::H5P_DEFAULT, h5s::H5S_ALL};

use crate::SourceDtype;
use crate::error::{IngestError, Result};

/// The names the filter array goes by, in the order they are tried.
pub const FILTER_DATASETS: [&str; 2] = ["filters", "filter"];
/// The name of the meta table (a group in pandas' formats, a byte dataset in CSV form).
pub const META_NAME: &str = "meta";

/// One cell of the meta table.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Missing (NaN, an empty CSV field, pandas' `nan_rep` string, a Parquet null).
    Null,
    /// An integer.
    Int(i64),
    /// A float (never NaN: NaN is [`MetaValue::Null`]).
    Float(f64),
    /// Text (CSV cells are text until a column asks for a number).
    Text(String),
}

impl MetaValue {
    /// The value as text (numbers formatted as Rust does), `None` when missing.
    pub fn as_text(&self) -> Option<String> {
        match self {
            MetaValue::Null => None,
            MetaValue::Int(i) => Some(i.to_string()),
            MetaValue::Float(f) => Some(f.to_string()),
            MetaValue::Text(s) => Some(s.clone()),
        }
    }

    /// The value as a float; text is parsed. `None` when missing, `Err` with the text when
    /// it is not a number.
    pub fn as_f64(&self) -> std::result::Result<Option<f64>, String> {
        match self {
            MetaValue::Null => Ok(None),
            MetaValue::Int(i) => Ok(Some(*i as f64)),
            MetaValue::Float(f) => Ok(Some(*f)),
            MetaValue::Text(s) => {
                let t = s.trim();
                if t.is_empty() || t.eq_ignore_ascii_case("nan") {
                    return Ok(None);
                }
                t.parse::<f64>()
                    .map(|v| if v.is_nan() { None } else { Some(v) })
                    .map_err(|_| s.clone())
            }
        }
    }

    /// The value as an integer: integers, integral floats and text that parses as either.
    /// `None` when missing, `Err` with a description when it is not an integer.
    pub fn as_i64(&self) -> std::result::Result<Option<i64>, String> {
        match self {
            MetaValue::Int(i) => Ok(Some(*i)),
            MetaValue::Text(s) if s.trim().parse::<i64>().is_ok() => Ok(s.trim().parse().ok()),
            other => match other.as_f64()? {
                None => Ok(None),
                Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                Some(f) => Err(f.to_string()),
            },
        }
    }
}

/// The `/meta` table, whatever form it came in: named columns, one row per meta row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetaTable {
    /// Where it was read from, for messages (`dataset.h5:/meta/table`, `meta.parquet`).
    pub source: String,
    /// Column names in table order.
    pub columns: Vec<String>,
    /// Rows, each with one value per column.
    pub rows: Vec<Vec<MetaValue>>,
}

impl MetaTable {
    /// The index of column `name`, if present.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

fn h5err(
    path: &Path,
    location: impl Into<String>,
) -> impl FnOnce(hdf5_metno::Error) -> IngestError {
    let path = path.to_owned();
    let location = location.into();
    move |e| IngestError::Hdf5 {
        path,
        location,
        message: e.to_string(),
    }
}

fn release_err(path: &Path, location: impl Into<String>, detail: impl Into<String>) -> IngestError {
    IngestError::Release {
        path: path.to_owned(),
        location: location.into(),
        detail: detail.into(),
    }
}

/// An opened release file: its filter array, checked to be N x 9 floats.
#[derive(Debug)]
pub struct ReleaseFile {
    path: PathBuf,
    file: hdf5_metno::File,
    filters: Dataset,
    filters_name: String,
    n_rows: u64,
    dtype: SourceDtype,
    chunk_rows: Option<usize>,
}

/// The HDF5 chunk cache of the release file: big enough for a few chunks of any sane
/// layout, so a layer boundary inside a compressed chunk does not decompress it twice.
const CHUNK_CACHE_BYTES: usize = 16 << 20;
const CHUNK_CACHE_SLOTS: usize = 12_421; // a prime, ~100x the chunks that fit

impl ReleaseFile {
    /// Opens `path` and checks its filter array (`/filters`, else `/filter`): N x 9 (or
    /// N x 3 x 3), float32 or float64.
    ///
    /// # Errors
    /// [`IngestError::FileNotFound`]; [`IngestError::Hdf5`] if it is not an HDF5 file;
    /// [`IngestError::Release`] naming the dataset when the array is missing or has the
    /// wrong shape or type.
    pub fn open(path: &Path) -> Result<ReleaseFile> {
        if !path.exists() {
            return Err(IngestError::FileNotFound {
                path: path.to_owned(),
            });
        }
        let file = hdf5_metno::File::with_options()
            .with_fapl(|p| p.chunk_cache(CHUNK_CACHE_SLOTS, CHUNK_CACHE_BYTES, 1.0))
            .open(path)
            .map_err(h5err(path, "opening the file (expected an HDF5 file)"))?;
        let Some(name) = FILTER_DATASETS
            .iter()
            .find(|n| file.link_exists(n))
            .map(|n| format!("/{n}"))
        else {
            let found = file.member_names().unwrap_or_default();
            return Err(release_err(
                path,
                "dataset /filters",
                format!(
                    "no dataset /filters (nor /filter); expected the N x 9 float32 filter \
                     array of the CNN Filter DB release; the file holds: {}",
                    if found.is_empty() {
                        "nothing".to_owned()
                    } else {
                        found.join(", ")
                    }
                ),
            ));
        };
        let filters = file
            .dataset(&name)
            .map_err(h5err(path, format!("dataset {name}")))?;
        let shape = filters.shape();
        let location = format!("dataset {name}");
        // N x 9 as the release documents it; N x 3 x 3 holds the same bytes per row.
        if !(shape.len() == 2 && shape[1] == 9 || shape.len() == 3 && shape[1..] == [3, 3]) {
            return Err(release_err(
                path,
                location,
                format!("shape {shape:?}; expected N x 9 (one 3x3 filter per row) or N x 3 x 3"),
            ));
        }
        let desc = filters
            .dtype()
            .and_then(|t| t.to_descriptor())
            .map_err(h5err(path, location.clone()))?;
        let dtype = match desc {
            TypeDescriptor::Float(FloatSize::U4) => SourceDtype::F32,
            TypeDescriptor::Float(FloatSize::U8) => SourceDtype::F64,
            other => {
                return Err(release_err(
                    path,
                    location,
                    format!("element type {other}; expected float32 (or float64)"),
                ));
            }
        };
        let chunk_rows = filters.chunk().and_then(|c| c.first().copied());
        Ok(ReleaseFile {
            path: path.to_owned(),
            n_rows: shape[0] as u64,
            filters,
            filters_name: name,
            dtype,
            chunk_rows,
            file,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `/filters` or `/filter`.
    pub fn filters_name(&self) -> &str {
        &self.filters_name
    }

    /// Number of filters (rows) in the array.
    pub fn n_rows(&self) -> u64 {
        self.n_rows
    }

    /// Element type of the array (the bytes [`ReleaseFile::read_rows`] returns).
    pub fn dtype(&self) -> SourceDtype {
        self.dtype
    }

    /// Rows per HDF5 chunk, for chunked arrays.
    pub fn chunk_rows(&self) -> Option<usize> {
        self.chunk_rows
    }

    /// The array's storage: `contiguous`, or `chunked N x 9` with its filters.
    pub fn storage(&self) -> String {
        match self.chunk_rows {
            None => "contiguous".to_owned(),
            Some(r) => {
                let filters: Vec<String> = self
                    .filters
                    .filters()
                    .iter()
                    .map(|f| format!("{f:?}").to_lowercase())
                    .collect();
                if filters.is_empty() {
                    format!("chunked {r} x 9")
                } else {
                    format!("chunked {r} x 9, {}", filters.join(", "))
                }
            }
        }
    }

    /// Reads rows `start..end` of the filter array into `out` (exactly
    /// `(end - start) * 9 * dtype.size()` bytes), as little-endian values of
    /// [`ReleaseFile::dtype`] (one hyperslab read; HDF5 decompresses the chunks it touches).
    ///
    /// # Errors
    /// [`IngestError::Release`] for rows outside the array or a wrong buffer size;
    /// [`IngestError::Hdf5`] when the library fails (e.g. a corrupt chunk).
    pub fn read_rows(&self, start: u64, end: u64, out: &mut [u8]) -> Result<()> {
        let location = format!("dataset {}, rows {start}..{end}", self.filters_name);
        let rows = end.saturating_sub(start) as usize;
        if start > end || end > self.n_rows || out.len() != rows * 9 * self.dtype.size() {
            return Err(release_err(
                &self.path,
                location,
                format!(
                    "invariant: rows must lie in 0..{} and the buffer hold {} bytes (it holds {})",
                    self.n_rows,
                    rows * 9 * self.dtype.size(),
                    out.len()
                ),
            ));
        }
        if rows == 0 {
            return Ok(());
        }
        let (s, e) = (start as usize, end as usize);
        let three_d = self.filters.ndim() == 3;
        let selection = if three_d {
            Selection::from((s..e, .., ..))
        } else {
            Selection::from((s..e, ..))
        };
        let fspace = self
            .filters
            .space()
            .and_then(|sp| sp.select(selection))
            .map_err(h5err(&self.path, location.clone()))?;
        let mspace = if three_d {
            hdf5_metno::Dataspace::try_new([rows, 3, 3])
        } else {
            hdf5_metno::Dataspace::try_new([rows, 9])
        }
        .map_err(h5err(&self.path, location.clone()))?;
        let memtype = match self.dtype {
            SourceDtype::F64 => *hdf5_metno::globals::H5T_IEEE_F64LE,
            _ => *hdf5_metno::globals::H5T_IEEE_F32LE,
        };
        let ds = self.filters.id();
        let buf = out.as_mut_ptr().cast();
        hdf5_metno::sync::sync(|| {
            // SAFETY: `out` holds exactly rows x 9 elements of the little-endian memory type
            // (checked above), the memory space is rows x 9 (or rows x 3 x 3) and the file
            // space selects as many elements; all ids are alive for the call.
            hdf5_metno::h5check(unsafe {
                H5Dread(ds, memtype, mspace.id(), fspace.id(), H5P_DEFAULT, buf)
            })
        })
        .map_err(h5err(&self.path, location))?;
        Ok(())
    }

    /// Reads `/meta` in whichever form it has (see the module docs).
    ///
    /// # Errors
    /// [`IngestError::PickledMeta`] for pandas' `fixed` format; [`IngestError::Release`]
    /// when `/meta` is missing or has an unknown shape, a block's column names cannot be
    /// read, or a field has a type the decoder does not know; [`IngestError::Hdf5`].
    pub fn read_meta(&self) -> Result<MetaTable> {
        let path = &self.path;
        if !self.file.link_exists(META_NAME) {
            return Err(release_err(
                path,
                "/meta",
                "no /meta; expected the pandas meta table of the CNN Filter DB release \
                 (or pass an export of it with --meta FILE)",
            ));
        }
        if let Ok(ds) = self.file.dataset(META_NAME) {
            return read_csv_bytes_meta(path, &ds);
        }
        let group = self.file.group(META_NAME).map_err(h5err(path, "/meta"))?;
        if group.link_exists("table") {
            return read_table_meta(path, &group);
        }
        let members = group.member_names().unwrap_or_default();
        if members.iter().any(|m| m.starts_with("block")) {
            let pickled = members
                .iter()
                .filter(|m| m.starts_with("block") && m.ends_with("_values"))
                .filter_map(|m| group.dataset(m).ok())
                .any(|d| {
                    matches!(
                        d.dtype().and_then(|t| t.to_descriptor()),
                        Ok(TypeDescriptor::VarLenArray(_))
                    )
                });
            return Err(IngestError::PickledMeta {
                path: path.to_owned(),
                dataset: "/meta".to_owned(),
                detail: if pickled {
                    "pandas wrote it in its default 'fixed' format, which stores string \
                     columns as pickled Python objects that only Python can read"
                } else {
                    "pandas wrote it in its 'fixed' format, which filterdb does not read"
                }
                .to_owned(),
            });
        }
        Err(release_err(
            path,
            "/meta",
            format!(
                "neither a pandas 'table' (no /meta/table) nor a CSV byte array; found members: {}",
                members.join(", ")
            ),
        ))
    }
}

/// `/meta` as a 1-D byte array holding a CSV file.
fn read_csv_bytes_meta(path: &Path, ds: &Dataset) -> Result<MetaTable> {
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5err(path, "dataset /meta"))?;
    if !matches!(
        desc,
        TypeDescriptor::Unsigned(IntSize::U1) | TypeDescriptor::Integer(IntSize::U1)
    ) || ds.ndim() != 1
    {
        return Err(release_err(
            path,
            "dataset /meta",
            format!(
                "a dataset of {desc} with shape {:?}; expected the pandas meta table (a group) \
                 or a 1-D uint8 array holding CSV text",
                ds.shape()
            ),
        ));
    }
    let bytes: Vec<u8> = if matches!(desc, TypeDescriptor::Unsigned(_)) {
        ds.read_raw::<u8>()
    } else {
        ds.read_raw::<i8>()
            .map(|v| v.into_iter().map(|b| b as u8).collect())
    }
    .map_err(h5err(path, "dataset /meta"))?;
    parse_csv(
        &bytes,
        &format!("{}:/meta (CSV bytes)", path.display()),
        "dataset /meta (CSV bytes)",
        path,
    )
}

/// Parses CSV text (header row + rows) into a [`MetaTable`]; every cell is text, empty
/// cells are missing.
fn parse_csv(bytes: &[u8], source: &str, location: &str, path: &Path) -> Result<MetaTable> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let err = |detail: String| release_err(path, location.to_owned(), detail);
    let columns: Vec<String> = rdr
        .headers()
        .map_err(|e| err(format!("reading the CSV header: {e}")))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(|e| err(format!("CSV row {i}: {e}")))?;
        rows.push(
            rec.iter()
                .map(|c| {
                    if c.is_empty() {
                        MetaValue::Null
                    } else {
                        MetaValue::Text(c.to_owned())
                    }
                })
                .collect(),
        );
    }
    Ok(MetaTable {
        source: source.to_owned(),
        columns,
        rows,
    })
}

/// Reads a fixed-size dataset or attribute of any type as raw bytes in a memory type made
/// from `desc` (native byte order, HDF5's own layout of compounds at `desc`'s offsets,
/// fixed strings null-padded to their width).
fn read_raw_bytes(
    obj: &Location,
    is_attr: bool,
    desc: &TypeDescriptor,
    n: usize,
) -> hdf5_metno::Result<Vec<u8>> {
    let memtype = Datatype::from_descriptor(desc)?;
    let mut buf = vec![0u8; n * desc.size()];
    if buf.is_empty() {
        return Ok(buf);
    }
    let (id, tid, ptr) = (obj.id(), memtype.id(), buf.as_mut_ptr().cast());
    hdf5_metno::sync::sync(|| {
        // SAFETY: `buf` holds `n` elements of `desc.size()` bytes, the size of `memtype`
        // (HDF5 sizes a compound made from a descriptor by the descriptor's size); the
        // descriptor has no variable-length parts (checked by callers), so HDF5 writes no
        // pointers into the buffer; the ids are alive for the call.
        hdf5_metno::h5check(unsafe {
            if is_attr {
                H5Aread(id, tid, ptr)
            } else {
                H5Dread(id, tid, H5S_ALL, H5S_ALL, H5P_DEFAULT, ptr)
            }
        })
    })?;
    Ok(buf)
}

fn has_varlen(desc: &TypeDescriptor) -> bool {
    match desc {
        TypeDescriptor::VarLenArray(_)
        | TypeDescriptor::VarLenAscii
        | TypeDescriptor::VarLenUnicode
        | TypeDescriptor::Reference(_) => true,
        TypeDescriptor::FixedArray(t, _) => has_varlen(t),
        TypeDescriptor::Compound(c) => c.fields.iter().any(|f| has_varlen(&f.ty)),
        _ => false,
    }
}

/// Reads a string attribute of `loc` (fixed or variable length); `None` if absent or not
/// a string.
fn string_attr(loc: &Location, name: &str) -> Option<Vec<u8>> {
    let attr = loc.attr(name).ok()?;
    let desc = attr.dtype().and_then(|t| t.to_descriptor()).ok()?;
    match desc {
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => {
            if !attr.is_scalar() {
                return None;
            }
            let mut b = read_raw_bytes(&attr, true, &desc, 1).ok()?;
            while b.last() == Some(&0) {
                b.pop();
            }
            Some(b)
        }
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<hdf5_metno::types::VarLenUnicode>()
            .ok()
            .map(|s| s.as_str().as_bytes().to_vec()),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<hdf5_metno::types::VarLenAscii>()
            .ok()
            .map(|s| s.as_str().as_bytes().to_vec()),
        _ => None,
    }
}

/// pandas' `table` format: decode `/meta/table` from its type descriptor.
fn read_table_meta(path: &Path, group: &Group) -> Result<MetaTable> {
    let location = "dataset /meta/table";
    let ds = group.dataset("table").map_err(h5err(path, location))?;
    let desc = ds
        .dtype()
        .and_then(|t| t.to_descriptor())
        .map_err(h5err(path, location))?;
    let TypeDescriptor::Compound(compound) = desc else {
        return Err(release_err(
            path,
            location,
            format!("element type {desc}; expected a compound type (pandas' 'table' format)"),
        ));
    };
    if ds.ndim() != 1 {
        return Err(release_err(
            path,
            location,
            format!("shape {:?}; expected one dimension (rows)", ds.shape()),
        ));
    }
    let n = ds.shape()[0];
    // Column names and missing-value spellings, per field.
    let mut plan: Vec<(usize, Vec<String>)> = Vec::new(); // (field index, column names)
    let mut nan_reps: HashMap<usize, Vec<u8>> = HashMap::new();
    let group_nan_rep = string_attr(group, "nan_rep")
        .and_then(|b| unpickle_str(&b).or_else(|| String::from_utf8(b).ok()))
        .map(String::into_bytes);
    for (i, f) in compound.fields.iter().enumerate() {
        if f.name == "index" {
            continue; // pandas' row index (a RangeIndex; the release's MultiIndex levels are data columns)
        }
        let width = match &f.ty {
            TypeDescriptor::FixedArray(_, k) => *k,
            _ => 1,
        };
        if has_varlen(&f.ty) {
            return Err(release_err(
                path,
                format!("{location}, field {}", f.name),
                format!(
                    "type {}; expected numbers or fixed-length strings (variable-length data \
                     is not read)",
                    f.ty
                ),
            ));
        }
        let names = if f.name.starts_with("values_block_") {
            let attr = format!("{}_kind", f.name);
            let raw = string_attr(&ds, &attr).ok_or_else(|| {
                release_err(
                    path,
                    format!("{location}, field {}", f.name),
                    format!(
                        "no readable attribute {attr} naming the block's columns; export /meta \
                         with pandas and pass it with --meta (see docs/import-cnnfilterdb.md)"
                    ),
                )
            })?;
            let names = unpickle_str_list(&raw).ok_or_else(|| {
                release_err(
                    path,
                    format!("{location}, attribute {attr}"),
                    format!(
                        "expected a pickled list of column names (pickle protocol 0, as \
                         PyTables writes it), got {:?}",
                        String::from_utf8_lossy(&raw[..raw.len().min(80)])
                    ),
                )
            })?;
            if names.len() != width {
                return Err(release_err(
                    path,
                    format!("{location}, attribute {attr}"),
                    format!(
                        "names {} column(s) ({}) but field {} holds {width}",
                        names.len(),
                        names.join(", "),
                        f.name
                    ),
                ));
            }
            names
        } else if width == 1 {
            vec![f.name.clone()]
        } else {
            (0..width).map(|k| format!("{}[{k}]", f.name)).collect()
        };
        if let Some(rep) = string_attr(&ds, &format!("{}_nan_rep", f.name)) {
            nan_reps.insert(i, rep);
        }
        plan.push((i, names));
    }
    let bytes = read_raw_bytes(&ds, false, &TypeDescriptor::Compound(compound.clone()), n)
        .map_err(h5err(path, location))?;
    let default_rep = group_nan_rep.unwrap_or_else(|| b"nan".to_vec());
    let size = compound.size;
    let mut columns = Vec::new();
    for (_, names) in &plan {
        columns.extend(names.iter().cloned());
    }
    let mut rows = Vec::with_capacity(n);
    for r in 0..n {
        let rec = &bytes[r * size..(r + 1) * size];
        let mut row = Vec::with_capacity(columns.len());
        for (i, _) in &plan {
            let f = &compound.fields[*i];
            let rep = nan_reps.get(i).unwrap_or(&default_rep);
            let (elem, k) = match &f.ty {
                TypeDescriptor::FixedArray(t, k) => (t.as_ref(), *k),
                t => (t, 1),
            };
            for j in 0..k {
                let off = f.offset + j * elem.size();
                let cell = rec.get(off..off + elem.size()).ok_or_else(|| {
                    release_err(
                        path,
                        format!("{location}, field {}", f.name),
                        "invariant: field lies outside the record".to_owned(),
                    )
                })?;
                row.push(decode_cell(elem, cell, rep).map_err(|detail| {
                    release_err(
                        path,
                        format!("{location}, field {}, row {r}", f.name),
                        detail,
                    )
                })?);
            }
        }
        rows.push(row);
    }
    Ok(MetaTable {
        source: format!("{}:/meta/table", path.display()),
        columns,
        rows,
    })
}

fn decode_cell(
    ty: &TypeDescriptor,
    b: &[u8],
    nan_rep: &[u8],
) -> std::result::Result<MetaValue, String> {
    let arr = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b[..n]);
        a
    };
    Ok(match ty {
        TypeDescriptor::Integer(s)
        | TypeDescriptor::Enum(hdf5_metno::types::EnumType {
            size: s,
            signed: true,
            ..
        }) => {
            let v = match s {
                IntSize::U1 => i64::from(i8::from_ne_bytes([b[0]])),
                IntSize::U2 => i64::from(i16::from_ne_bytes([b[0], b[1]])),
                IntSize::U4 => i64::from(i32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                IntSize::U8 => i64::from_ne_bytes(arr(8)),
            };
            MetaValue::Int(v)
        }
        TypeDescriptor::Unsigned(s)
        | TypeDescriptor::Enum(hdf5_metno::types::EnumType { size: s, .. }) => {
            let v = match s {
                IntSize::U1 => u64::from(b[0]),
                IntSize::U2 => u64::from(u16::from_ne_bytes([b[0], b[1]])),
                IntSize::U4 => u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                IntSize::U8 => u64::from_ne_bytes(arr(8)),
            };
            i64::try_from(v).map_or(MetaValue::Float(v as f64), MetaValue::Int)
        }
        TypeDescriptor::Boolean => MetaValue::Int(i64::from(b[0] != 0)),
        TypeDescriptor::Float(FloatSize::U8) => {
            let v = f64::from_ne_bytes(arr(8));
            if v.is_nan() {
                MetaValue::Null
            } else {
                MetaValue::Float(v)
            }
        }
        TypeDescriptor::Float(FloatSize::U4) => {
            let v = f32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
            if v.is_nan() {
                MetaValue::Null
            } else {
                MetaValue::Float(f64::from(v))
            }
        }
        TypeDescriptor::FixedAscii(_) | TypeDescriptor::FixedUnicode(_) => {
            let end = b.iter().rposition(|&c| c != 0).map_or(0, |p| p + 1);
            let s = &b[..end];
            if s == nan_rep {
                MetaValue::Null
            } else {
                MetaValue::Text(String::from_utf8_lossy(s).into_owned())
            }
        }
        other => {
            return Err(format!(
                "type {other}; expected integers, floats, booleans or fixed-length strings"
            ));
        }
    })
}

/// Reads a `--meta` export of `/meta`: Parquet (`.parquet`, `.pq`) or CSV (anything else).
/// pandas writes the release's MultiIndex levels as ordinary columns in both.
///
/// # Errors
/// [`IngestError::FileNotFound`], [`IngestError::Io`], or [`IngestError::Release`] naming
/// the file when it cannot be parsed.
pub fn read_meta_file(path: &Path) -> Result<MetaTable> {
    if !path.exists() {
        return Err(IngestError::FileNotFound {
            path: path.to_owned(),
        });
    }
    let is_parquet = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq"));
    if is_parquet {
        return read_parquet_meta(path);
    }
    let bytes = std::fs::read(path).map_err(|source| IngestError::Io {
        path: path.to_owned(),
        action: "reading",
        source,
    })?;
    parse_csv(
        &bytes,
        &path.display().to_string(),
        "meta table read as CSV (files ending in .parquet are read as Parquet)",
        path,
    )
}

fn read_parquet_meta(path: &Path) -> Result<MetaTable> {
    use arrow::array::{Array, AsArray, RecordBatchReader};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    let err = |detail: String| release_err(path, "Parquet meta table", detail);
    let file = std::fs::File::open(path).map_err(|source| IngestError::Io {
        path: path.to_owned(),
        action: "opening",
        source,
    })?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| err(format!("not a readable Parquet file: {e}")))?;
    let schema = reader.schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows: Vec<Vec<MetaValue>> = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(format!("reading a record batch: {e}")))?;
        let base = rows.len();
        rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(columns.len())));
        for (ci, col) in batch.columns().iter().enumerate() {
            let name = &columns[ci];
            let cast = |to: &DataType| {
                arrow::compute::cast(col, to).map_err(|e| {
                    err(format!(
                        "column {name:?}: cannot read {}: {e}",
                        col.data_type()
                    ))
                })
            };
            let dt = col.data_type().clone();
            let values: Vec<MetaValue> = if dt.is_integer() || dt == DataType::Boolean {
                let a = cast(&DataType::Int64)?;
                let a = a.as_primitive::<Int64Type>();
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            MetaValue::Null
                        } else {
                            MetaValue::Int(a.value(i))
                        }
                    })
                    .collect()
            } else if dt.is_floating()
                || matches!(dt, DataType::Decimal128(..) | DataType::Decimal256(..))
            {
                let a = cast(&DataType::Float64)?;
                let a = a.as_primitive::<Float64Type>();
                (0..a.len())
                    .map(|i| {
                        let v = a.value(i);
                        if a.is_null(i) || v.is_nan() {
                            MetaValue::Null
                        } else {
                            MetaValue::Float(v)
                        }
                    })
                    .collect()
            } else if dt == DataType::Null {
                vec![MetaValue::Null; col.len()]
            } else {
                let a = cast(&DataType::Utf8)?;
                let a = a.as_string::<i32>();
                (0..a.len())
                    .map(|i| {
                        if a.is_null(i) {
                            MetaValue::Null
                        } else {
                            MetaValue::Text(a.value(i).to_owned())
                        }
                    })
                    .collect()
            };
            for (k, v) in values.into_iter().enumerate() {
                rows[base + k].push(v);
            }
        }
    }
    Ok(MetaTable {
        source: path.display().to_string(),
        columns,
        rows,
    })
}

/// Decodes a pickled list of strings, as PyTables stores pandas' column lists in
/// attributes (pickle protocol 0: `(lp0\nVname\np1\na...a.`; Python 2's `S'name'` too).
///
/// Only this shape is accepted: a list whose items are strings. Any other opcode, or any
/// other object, gives `None`, so nothing but strings is ever built from the bytes.
///
/// ```
/// use filterdb_ingest::hdf5::unpickle_str_list;
/// let raw = b"(lp0\nVmodel\np1\naV(3, 3) filters\np2\naVVisual Category\np3\na.";
/// assert_eq!(unpickle_str_list(raw).unwrap(), ["model", "(3, 3) filters", "Visual Category"]);
/// ```
pub fn unpickle_str_list(bytes: &[u8]) -> Option<Vec<String>> {
    match unpickle(bytes)? {
        Pickled::List(items) => items
            .into_iter()
            .map(|i| match i {
                Pickled::Str(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Decodes a pickled string (protocol 0), e.g. pandas' `nan_rep` attribute.
fn unpickle_str(bytes: &[u8]) -> Option<String> {
    match unpickle(bytes)? {
        Pickled::Str(s) => Some(s),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Pickled {
    Mark,
    None,
    Str(String),
    List(Vec<Pickled>),
}

/// A minimal pickle protocol-0 reader for strings, `None` and lists of them.
fn unpickle(bytes: &[u8]) -> Option<Pickled> {
    let mut stack: Vec<Pickled> = Vec::new();
    let mut memo: HashMap<String, Pickled> = HashMap::new();
    let mut i = 0;
    let line = |i: &mut usize| -> Option<&[u8]> {
        let rest = bytes.get(*i..)?;
        let end = rest.iter().position(|&c| c == b'\n')?;
        *i += end + 1;
        Some(&rest[..end])
    };
    while i < bytes.len() {
        let op = bytes[i];
        i += 1;
        match op {
            b'(' => stack.push(Pickled::Mark),
            b'N' => stack.push(Pickled::None),
            b'l' => {
                let m = stack.iter().rposition(|p| *p == Pickled::Mark)?;
                let items = stack.split_off(m + 1);
                stack.pop();
                stack.push(Pickled::List(items));
            }
            b']' => stack.push(Pickled::List(Vec::new())),
            b'a' => {
                let item = stack.pop()?;
                match stack.last_mut()? {
                    Pickled::List(v) => v.push(item),
                    _ => return None,
                }
            }
            b'V' => {
                let raw = line(&mut i)?;
                stack.push(Pickled::Str(raw_unicode_escape(raw)?));
            }
            b'S' => {
                let raw = line(&mut i)?;
                stack.push(Pickled::Str(py_str_literal(raw)?));
            }
            b'p' => {
                let key = String::from_utf8(line(&mut i)?.to_vec()).ok()?;
                memo.insert(key, stack.last()?.clone());
            }
            b'g' => {
                let key = String::from_utf8(line(&mut i)?.to_vec()).ok()?;
                stack.push(memo.get(&key)?.clone());
            }
            b'.' => return if stack.len() == 1 { stack.pop() } else { None },
            _ => return None,
        }
    }
    None
}

/// Python's `raw-unicode-escape` as pickle protocol 0 writes `V` strings: bytes are
/// Latin-1 code points, `\uXXXX` and `\UXXXXXXXX` escape the rest.
fn raw_unicode_escape(raw: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c == b'\\' && i + 1 < raw.len() && (raw[i + 1] == b'u' || raw[i + 1] == b'U') {
            let n = if raw[i + 1] == b'u' { 4 } else { 8 };
            let hex = std::str::from_utf8(raw.get(i + 2..i + 2 + n)?).ok()?;
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            i += 2 + n;
        } else {
            out.push(char::from(c));
            i += 1;
        }
    }
    Some(out)
}

/// A Python 2 `str` literal as pickle protocol 0 writes `S` strings: `'...'` or `"..."`
/// with backslash escapes; the bytes are taken as UTF-8.
fn py_str_literal(raw: &[u8]) -> Option<String> {
    let q = *raw.first()?;
    if (q != b'\'' && q != b'"') || raw.len() < 2 || *raw.last()? != q {
        return None;
    }
    let body = &raw[1..raw.len() - 1];
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' && i + 1 < body.len() {
            let e = body[i + 1];
            i += 2;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'x' => {
                    let hex = std::str::from_utf8(body.get(i..i + 2)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                other => out.push(other),
            }
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpickles_pytables_column_lists() {
        let raw = b"(lp0\nV(1, 1) filters\np1\naV(3, 3) filters\np2\naVConv\np3\naVdepth\np4\na.";
        assert_eq!(
            unpickle_str_list(raw).unwrap(),
            vec!["(1, 1) filters", "(3, 3) filters", "Conv", "depth"]
        );
        // escapes, Latin-1 bytes, memo GET, Python 2 strings
        let raw = b"(lp0\nVa\\u005cb\\u00e9\np1\nag1\naS'caf\\xc3\\xa9'\np2\na.";
        assert_eq!(
            unpickle_str_list(raw).unwrap(),
            vec!["a\\b\u{e9}", "a\\b\u{e9}", "caf\u{e9}"]
        );
        let raw = b"(lp0\nV\xe9t\xe9\np1\na.";
        assert_eq!(unpickle_str_list(raw).unwrap(), vec!["\u{e9}t\u{e9}"]);
        assert_eq!(unpickle_str(b"Vnan\np0\n."), Some("nan".to_owned()));
        assert_eq!(unpickle_str(b"N."), None);
        assert_eq!(unpickle(b"N."), Some(Pickled::None));
        // empty list, binary empty list
        assert_eq!(unpickle_str_list(b"(lp0\n.").unwrap(), Vec::<String>::new());
        assert_eq!(unpickle_str_list(b"].").unwrap(), Vec::<String>::new());
    }

    #[test]
    fn refuses_other_pickles() {
        // a global lookup + call (what makes pickles dangerous) is never accepted
        assert!(unpickle_str_list(b"cos\nsystem\n(S'echo hi'\ntR.").is_none());
        // a list holding a non-string
        assert!(unpickle_str_list(b"(lp0\nI1\na.").is_none());
        assert!(unpickle_str_list(b"(lp0\nN\na.").is_none());
        // truncated, no STOP, two objects
        assert!(unpickle_str_list(b"(lp0\nVa\np1\na").is_none());
        assert!(unpickle_str_list(b"(lp0\nVa").is_none());
        assert!(unpickle_str_list(b"NN.").is_none());
        assert!(unpickle_str_list(b"").is_none());
        // binary protocols
        assert!(unpickle_str_list(b"\x80\x04\x95\x10\x00").is_none());
    }

    #[test]
    fn meta_values_convert() {
        assert_eq!(MetaValue::Text(" 12 ".into()).as_i64(), Ok(Some(12)));
        assert_eq!(MetaValue::Text("3.0".into()).as_i64(), Ok(Some(3)));
        assert_eq!(MetaValue::Float(4.0).as_i64(), Ok(Some(4)));
        assert!(MetaValue::Float(4.5).as_i64().is_err());
        assert_eq!(
            MetaValue::Text("deep".into()).as_i64(),
            Err("deep".to_owned())
        );
        assert_eq!(MetaValue::Null.as_i64(), Ok(None));
        assert_eq!(MetaValue::Text("nan".into()).as_f64(), Ok(None));
        assert_eq!(MetaValue::Text("".into()).as_f64(), Ok(None));
        assert_eq!(MetaValue::Int(3).as_f64(), Ok(Some(3.0)));
        assert_eq!(MetaValue::Float(0.5).as_text().as_deref(), Some("0.5"));
        assert_eq!(MetaValue::Null.as_text(), None);
    }

    #[test]
    fn csv_cells_are_text_and_empty_is_missing() {
        let t = parse_csv(b"a,b\n1,\nx,2.5\n", "t.csv", "CSV", Path::new("t.csv")).unwrap();
        assert_eq!(t.columns, vec!["a", "b"]);
        assert_eq!(
            t.rows,
            vec![
                vec![MetaValue::Text("1".into()), MetaValue::Null],
                vec![MetaValue::Text("x".into()), MetaValue::Text("2.5".into())],
            ]
        );
        let e = parse_csv(b"a,b\n1\n", "t.csv", "CSV", Path::new("t.csv")).unwrap_err();
        assert!(e.to_string().contains("CSV row 0"), "{e}");
    }
}
