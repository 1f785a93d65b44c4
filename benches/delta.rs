//! The scan's id-column decoder (`filterdb_store::delta::Decoder`) against parquet-rs's
//! Arrow reader, and the id-column encoder against its earlier scalar version, on the
//! same values, in values/s:
//!
//! - `delta_decode/<column>/parquet-rs`: a one-row-group file (DELTA_BINARY_PACKED, as
//!   the store writes ids) read whole by `ParquetRecordBatchReader`, which is how the
//!   scan read id columns before session 10;
//! - `delta_decode/<column>/filterdb`: the same values encoded by
//!   `filterdb_store::delta::encode` and decoded 8,192 at a time (a scan batch) into
//!   fresh vectors, as the scan does now.
//!
//! - `delta_encode/<column>/reference`: `filterdb_store::delta::encode_ref`, the scalar
//!   encoder `encode` was before it got a fixed-size block path;
//! - `delta_encode/<column>/filterdb`: `filterdb_store::delta::encode` now.
//!
//! Both encoders take the column in pieces of 8,192 values (an export's batches) and
//! append to one reused buffer; their bytes and bounds are checked to be equal before
//! timing.
//!
//! The columns are a model's ids in store order: `model_id` (one value), `layer_idx`,
//! `out_channel` (runs) and `in_channel` (counting, wrapping at each out channel). Both
//! decoders' values are checked to be equal before timing.
//!
//! ```text
//! CARGO_TARGET_DIR=/var/tmp/filterdb-target-release cargo bench -p filterdb-benches --bench delta
//! cargo bench -p filterdb-benches --bench delta -- delta_encode     # the encoders only
//! ```

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array, Int64Array, RecordBatch};
use arrow::datatypes::{Field, Int32Type, Int64Type, Schema};
use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use filterdb_store::delta::{Decoder, DeltaInt, encode, encode_ref};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Encoding;
use parquet::file::properties::WriterProperties;

/// Rows per column (a large model's row group).
const ROWS: usize = 1 << 20;
/// Rows per decoded batch (DataFusion's batch size).
const BATCH: usize = 8192;

/// (layer_idx, out_channel, in_channel) of `ROWS` filters in store order, over layers
/// of these (out, in) channel counts, repeated.
fn ids() -> (Vec<i32>, Vec<i32>, Vec<i32>) {
    const SHAPES: [(i32, i32); 6] = [
        (64, 3),
        (64, 64),
        (128, 64),
        (128, 128),
        (256, 256),
        (512, 512),
    ];
    let (mut layer, mut out, mut inp) = (Vec::new(), Vec::new(), Vec::new());
    'fill: for l in 0.. {
        let (o, i) = SHAPES[l % SHAPES.len()];
        for oc in 0..o {
            for ic in 0..i {
                if layer.len() == ROWS {
                    break 'fill;
                }
                layer.push(l as i32);
                out.push(oc);
                inp.push(ic);
            }
        }
    }
    (layer, out, inp)
}

/// `array` as a one-column, one-row-group Parquet file with DELTA_BINARY_PACKED values.
fn parquet_file(array: ArrayRef) -> Bytes {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "v",
        array.data_type().clone(),
        false,
    )]));
    let props = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .set_encoding(Encoding::DELTA_BINARY_PACKED)
        .set_max_row_group_row_count(Some(ROWS))
        .set_data_page_row_count_limit(ROWS)
        .set_data_page_size_limit(usize::MAX)
        .build();
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, Arc::clone(&schema), Some(props)).expect("writer");
    w.write(&RecordBatch::try_new(schema, vec![array]).expect("batch"))
        .expect("write");
    w.close().expect("close");
    Bytes::from(out)
}

fn parquet_rs(file: &Bytes) -> ArrayRef {
    let mut r = ParquetRecordBatchReaderBuilder::try_new(file.clone())
        .expect("reader")
        .with_batch_size(ROWS)
        .build()
        .expect("build");
    Arc::clone(r.next().expect("a batch").expect("read").column(0))
}

fn filterdb<T: DeltaInt>(encoded: &Bytes) -> Vec<Vec<T>> {
    let mut d = Decoder::<T>::new(encoded.clone()).expect("decoder");
    let mut batches = Vec::with_capacity(ROWS.div_ceil(BATCH));
    while d.remaining() > 0 {
        let mut v = Vec::with_capacity(BATCH);
        d.read(BATCH.min(d.remaining()), &mut v).expect("read");
        batches.push(v);
    }
    batches
}

fn bench_column<T: DeltaInt + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    name: &str,
    values: Vec<T>,
    array: ArrayRef,
    from_array: impl Fn(&ArrayRef) -> Vec<T>,
) {
    let file = parquet_file(array);
    let mut encoded = Vec::new();
    encode(&[&values], &mut encoded);
    let encoded = Bytes::from(encoded);
    assert_eq!(from_array(&parquet_rs(&file)), values, "{name}: parquet-rs");
    assert_eq!(filterdb::<T>(&encoded).concat(), values, "{name}: filterdb");
    let mut g = c.benchmark_group(format!("delta_decode/{name}"));
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("parquet-rs", |b| b.iter(|| parquet_rs(black_box(&file))));
    g.bench_function("filterdb", |b| {
        b.iter(|| filterdb::<T>(black_box(&encoded)))
    });
    g.finish();
    bench_encode(c, name, &values);
}

/// `delta_encode/<name>`: the pre-change scalar encoder against `encode`, on `values` in
/// pieces of a batch each.
fn bench_encode<T: DeltaInt + PartialEq + std::fmt::Debug>(
    c: &mut Criterion,
    name: &str,
    values: &[T],
) {
    let parts: Vec<&[T]> = values.chunks(BATCH).collect();
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let want_bounds = encode_ref(&parts, &mut want);
    let got_bounds = encode(&parts, &mut got);
    assert_eq!(got_bounds, want_bounds, "{name}: encode's bounds");
    assert!(
        got == want,
        "{name}: encode's bytes are not the reference's"
    );
    let mut out = Vec::with_capacity(want.len());
    let mut g = c.benchmark_group(format!("delta_encode/{name}"));
    g.sample_size(20)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(values.len() as u64));
    g.bench_function("reference", |b| {
        b.iter(|| {
            out.clear();
            encode_ref(black_box(&parts), &mut out)
        });
    });
    g.bench_function("filterdb", |b| {
        b.iter(|| {
            out.clear();
            encode(black_box(&parts), &mut out)
        });
    });
    g.finish();
}

fn bench_delta(c: &mut Criterion) {
    let (layer, out, inp) = ids();
    let i32s = |a: &ArrayRef| a.as_primitive::<Int32Type>().values().to_vec();
    let model = vec![42i64; ROWS];
    bench_column(
        c,
        "model_id",
        model.clone(),
        Arc::new(Int64Array::from(model)),
        |a| a.as_primitive::<Int64Type>().values().to_vec(),
    );
    for (name, v) in [
        ("layer_idx", layer),
        ("out_channel", out),
        ("in_channel", inp),
    ] {
        let array: ArrayRef = Arc::new(Int32Array::from(v.clone()));
        bench_column(c, name, v, array, i32s);
    }
}

criterion_group!(benches, bench_delta);
criterion_main!(benches);
