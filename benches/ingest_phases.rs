//! Where does ingest time go? Times each phase of ingesting one synthetic model (the
//! same ~1M-filter model as the `ingest` bench) on its own and prints filters/s per phase:
//!
//! 1. `read_safetensors`: mmap + sha256 of the whole file + header parse (page-cached);
//! 2. `normalise`;
//! 3. `stage` (convert + Parquet encode + fsync) and `commit`, f16 and f32 stores;
//! 4. the conversion loop alone (a copy of `crates/store/src/convert.rs`' OIHW loop), and
//!    f32 -> f16 rounding alone: `half::f16::from_f32` as this workspace compiles it vs
//!    F16C (`vcvtps2ph`) intrinsics;
//! 5. Parquet encoding alone (the store's writer properties, into `io::sink()`): all
//!    columns, only the 9 weight columns, only the 5 id columns; f16 and f32;
//! 6. fsync of a file of the same size; a plain `write` of the raw column bytes.
//!
//! Plain binary (no criterion): each phase runs `FILTERDB_PHASE_REPS` (default 5) times,
//! the median is reported.
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo bench -p filterdb-benches --bench ingest_phases
//! ```

#[path = "common.rs"]
mod common;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, Float16Array, Float32Array, Int32Array, Int64Array, RecordBatch};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{Field, Schema, SchemaRef};
use filterdb_ingest::{ModelOverrides, VocabExtra, normalise, read_card, read_safetensors};
use filterdb_store::{
    CommitMode, FILTERS_ROW_GROUP, Precision, StageOptions, Store, WEIGHT_COLUMNS, filters_schema,
};
use half::f16;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

/// Runs `f` `reps` times; returns the median seconds and the last result.
fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        times.push(t.elapsed().as_secs_f64());
        last = Some(r);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], last.expect("reps >= 1"))
}

struct Report {
    n: f64,
    rows: Vec<(String, f64)>,
}

impl Report {
    fn add(&mut self, name: &str, secs: f64) {
        println!(
            "{name:<58} {:>9.1} ms {:>10.1} M filters/s {:>8.1} ns/filter",
            secs * 1e3,
            self.n / secs / 1e6,
            secs * 1e9 / self.n
        );
        self.rows.push((name.to_owned(), secs));
    }
}

/// Same properties as `props_filters()` in crates/store/src/write.rs (a copy).
fn props_filters() -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_max_row_group_row_count(Some(FILTERS_ROW_GROUP))
        .set_data_page_row_count_limit(FILTERS_ROW_GROUP)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for c in ["filter_id", "layer_idx", "out_channel", "in_channel"] {
        b = b.set_column_encoding(ColumnPath::from(c), Encoding::DELTA_BINARY_PACKED);
    }
    for w in WEIGHT_COLUMNS {
        let p = ColumnPath::from(w);
        b = b
            .set_column_compression(p.clone(), Compression::UNCOMPRESSED)
            .set_column_encoding(p.clone(), Encoding::PLAIN)
            .set_column_statistics_enabled(p, EnabledStatistics::None);
    }
    b.build()
}

/// The OIHW f32 conversion loop of crates/store/src/convert.rs (copied: it is crate-private).
fn convert_like_store<D>(
    bytes: &[u8],
    n: usize,
    cols: &mut [Vec<D>; 9],
    conv: impl Fn(f32) -> D,
) -> f64 {
    let mut max_abs = 0f64;
    let mut all_finite = true;
    for c in cols.iter_mut() {
        c.reserve(n);
    }
    for filter in bytes.chunks_exact(36) {
        for (j, col) in cols.iter_mut().enumerate() {
            let mut a = [0u8; 4];
            a.copy_from_slice(&filter[j * 4..j * 4 + 4]);
            let v = f32::from_le_bytes(a);
            all_finite &= v.is_finite();
            let x = f64::from(v.abs());
            if x > max_abs {
                max_abs = x;
            }
            col.push(conv(v));
        }
    }
    if all_finite { max_abs } else { f64::NAN }
}

/// f32 -> f16 bits with F16C, 8 at a time (round to nearest even, like `f16::from_f32`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "f16c,avx")]
unsafe fn f16c_convert(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let chunks = src.len() / 8;
    for i in 0..chunks {
        // SAFETY: i*8+8 <= len for both slices (dst.len() == src.len()).
        unsafe {
            let v = _mm256_loadu_ps(src.as_ptr().add(i * 8));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(dst.as_mut_ptr().add(i * 8) as *mut __m128i, h);
        }
    }
    for i in chunks * 8..src.len() {
        dst[i] = f16::from_f32(src[i]).to_bits();
    }
}

fn weight_arrays(model: &filterdb_ingest::GenModel, precision: Precision) -> Vec<Vec<ArrayRef>> {
    model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 4)
        .map(|t| {
            let n = t.shape[0] * t.shape[1];
            match precision {
                Precision::F16 => {
                    let mut cols: [Vec<f16>; 9] = Default::default();
                    convert_like_store(&t.data, n, &mut cols, f16::from_f32);
                    cols.into_iter()
                        .map(|c| {
                            Arc::new(Float16Array::new(ScalarBuffer::from(c), None)) as ArrayRef
                        })
                        .collect()
                }
                Precision::F32 => {
                    let mut cols: [Vec<f32>; 9] = Default::default();
                    convert_like_store(&t.data, n, &mut cols, |v| v);
                    cols.into_iter()
                        .map(|c| {
                            Arc::new(Float32Array::new(ScalarBuffer::from(c), None)) as ArrayRef
                        })
                        .collect()
                }
            }
        })
        .collect()
}

fn id_arrays(model: &filterdb_ingest::GenModel) -> Vec<Vec<ArrayRef>> {
    let mut next = 0i64;
    model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 4)
        .enumerate()
        .map(|(li, t)| {
            let (out, inp) = (t.shape[0], t.shape[1]);
            let n = out * inp;
            let v: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from_iter_values(next..next + n as i64)),
                Arc::new(Int64Array::from_value(0, n)),
                Arc::new(Int32Array::from_value(li as i32, n)),
                Arc::new(Int32Array::from_iter_values(
                    (0..out).flat_map(|o| std::iter::repeat_n(o as i32, inp)),
                )),
                Arc::new(Int32Array::from_iter_values(
                    (0..out).flat_map(|_| 0..inp as i32),
                )),
            ];
            next += n as i64;
            v
        })
        .collect()
}

fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> u64 {
    let mut w = ArrowWriter::try_new(CountingSink(0), Arc::clone(schema), Some(props_filters()))
        .expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.into_inner().expect("close").0
}

struct CountingSink(u64);
impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sub_schema(full: &SchemaRef, names: &[&str]) -> SchemaRef {
    let fields: Vec<Field> = names
        .iter()
        .map(|n| full.field_with_name(n).expect("field").clone())
        .collect();
    Arc::new(Schema::new(fields))
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let reps = common::env_usize("FILTERDB_PHASE_REPS", 5).max(1);
    let model = common::bench_model();
    let n = model.n_filters as f64;
    let mut r = Report {
        n,
        rows: Vec::new(),
    };
    let dir = tempfile::Builder::new()
        .prefix("filterdb-bench-phases")
        .tempdir()
        .expect("tempdir");
    let file = dir.path().join("bench_model.safetensors");
    common::write_safetensors(&model, &file);
    let card = read_card(&file.with_extension("toml")).expect("card");
    println!(
        "model: {} filters, {} layers; {} reps, median shown\n",
        model.n_filters, model.n_layers, reps
    );

    // 1-2: read + hash + parse, normalise
    let (t, raw) = time(reps, || read_safetensors(&file).expect("read"));
    r.add("read_safetensors (mmap + sha256 + parse)", t);
    let (t, _) = time(reps, || {
        normalise(
            &raw,
            Some(&card),
            &ModelOverrides::default(),
            &VocabExtra::default(),
        )
        .expect("normalise")
        .n_filters()
    });
    r.add("normalise", t);

    // 3: stage and commit through the store
    let input = common::model_input(&model);
    for precision in [Precision::F16, Precision::F32] {
        let mut stage_t = Vec::new();
        let mut commit_t = Vec::new();
        let mut bytes = 0;
        for i in 0..reps {
            let root = dir.path().join(format!("store-{precision}-{i}"));
            let store = Store::init(&root, precision).expect("init");
            let mut w = store.writer(false).expect("writer");
            let t0 = Instant::now();
            let staged = w.stage(&input, &StageOptions::default()).expect("stage");
            stage_t.push(t0.elapsed().as_secs_f64());
            bytes = staged.bytes();
            let t1 = Instant::now();
            w.commit(staged, CommitMode::Add).expect("commit");
            commit_t.push(t1.elapsed().as_secs_f64());
            drop(w);
            std::fs::remove_dir_all(&root).expect("rm");
        }
        stage_t.sort_by(f64::total_cmp);
        commit_t.sort_by(f64::total_cmp);
        r.add(
            &format!(
                "stage {precision} (convert + encode + fsync), {:.1} B/filter",
                bytes as f64 / n
            ),
            stage_t[reps / 2],
        );
        r.add(
            &format!("commit {precision} (rename + log)"),
            commit_t[reps / 2],
        );
    }

    // 4: conversion alone
    let conv: Vec<&filterdb_ingest::GenTensor> = model
        .tensors
        .iter()
        .filter(|t| t.shape.len() == 4)
        .collect();
    let (t, _) = time(reps, || {
        conv.iter()
            .map(|t| {
                let mut cols: [Vec<f16>; 9] = Default::default();
                convert_like_store(&t.data, t.shape[0] * t.shape[1], &mut cols, f16::from_f32);
                cols[8].len()
            })
            .sum::<usize>()
    });
    r.add(
        "convert f32 -> 9 x f16 cols (store's loop, half::from_f32)",
        t,
    );
    let (t, _) = time(reps, || {
        conv.iter()
            .map(|t| {
                let mut cols: [Vec<f32>; 9] = Default::default();
                convert_like_store(&t.data, t.shape[0] * t.shape[1], &mut cols, |v| v);
                cols[8].len()
            })
            .sum::<usize>()
    });
    r.add("convert f32 -> 9 x f32 cols (store's loop, no rounding)", t);
    let flat: Vec<f32> = conv
        .iter()
        .flat_map(|t| {
            t.data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        })
        .collect();
    let mut out16 = vec![0u16; flat.len()];
    let (t, _) = time(reps, || {
        for (d, s) in out16.iter_mut().zip(&flat) {
            *d = f16::from_f32(*s).to_bits();
        }
        out16[out16.len() / 2]
    });
    r.add(
        "  f32 -> f16 rounding only, half::f16::from_f32 (as built)",
        t,
    );
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("f16c") && std::is_x86_feature_detected!("avx") {
        let mut out_c = vec![0u16; flat.len()];
        let (t, _) = time(reps, || {
            // SAFETY: features checked above; equal lengths.
            unsafe { f16c_convert(&flat, &mut out_c) };
            out_c[out_c.len() / 2]
        });
        r.add("  f32 -> f16 rounding only, F16C intrinsics", t);
        assert_eq!(out16, out_c, "F16C and half disagree");
    }

    // 5: Parquet encode alone
    let ids = id_arrays(&model);
    for precision in [Precision::F16, Precision::F32] {
        let full = filters_schema(precision);
        let weights = weight_arrays(&model, precision);
        let batches_all: Vec<RecordBatch> = ids
            .iter()
            .zip(&weights)
            .map(|(i, w)| {
                let cols: Vec<ArrayRef> = i.iter().chain(w).cloned().collect();
                RecordBatch::try_new(Arc::clone(&full), cols).expect("batch")
            })
            .collect();
        let (t, b) = time(reps, || encode(&full, &batches_all));
        r.add(
            &format!(
                "parquet encode {precision}, all 14 columns ({:.1} B/filter)",
                b as f64 / n
            ),
            t,
        );
        let ws = sub_schema(&full, &WEIGHT_COLUMNS);
        let batches_w: Vec<RecordBatch> = weights
            .iter()
            .map(|w| RecordBatch::try_new(Arc::clone(&ws), w.clone()).expect("batch"))
            .collect();
        let (t, _) = time(reps, || encode(&ws, &batches_w));
        r.add(
            &format!("  parquet encode {precision}, 9 weight columns only"),
            t,
        );
        if precision == Precision::F16 {
            let is = sub_schema(
                &full,
                &[
                    "filter_id",
                    "model_id",
                    "layer_idx",
                    "out_channel",
                    "in_channel",
                ],
            );
            let batches_i: Vec<RecordBatch> = ids
                .iter()
                .map(|i| RecordBatch::try_new(Arc::clone(&is), i.clone()).expect("batch"))
                .collect();
            let (t, _) = time(reps, || encode(&is, &batches_i));
            r.add("  parquet encode, 5 id columns only", t);
        }
    }

    // 6: raw write and fsync of a file of the f16 store's size
    let raw16: Vec<u8> = out16.iter().flat_map(|x| x.to_le_bytes()).collect();
    let target = dir.path().join("raw.bin");
    let (t, _) = time(reps, || {
        let mut f = std::fs::File::create(&target).expect("create");
        f.write_all(&raw16).expect("write");
        f
    });
    r.add("write raw f16 bytes (18 B/filter), no fsync", t);
    let (t, _) = time(reps, || {
        let mut f = std::fs::File::create(&target).expect("create");
        f.write_all(&raw16).expect("write");
        f.sync_all().expect("sync");
    });
    r.add("write raw f16 bytes + fsync", t);
    let _ = r.rows.len();
}
