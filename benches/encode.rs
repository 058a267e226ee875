//! Criterion benches for the encoders and compressors, on synthetic `orders`-shaped rows (no database).
// criterion_group! and criterion_main! expand to undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pgspout::compress::{Compressor, Encoding, Levels};
use pgspout::encode::{Columnar, EncodedColumn, Format, RowEncoder, Scalar, ValueKind};

/// One row's binary wire values.
type Row = Vec<Option<Vec<u8>>>;

/// `numeric` wire bytes for `cents / 100` with scale 2.
fn numeric(cents: i64) -> Vec<u8> {
    let (whole, fraction) = (cents / 100, (cents % 100) as i16 * 100);
    let mut groups = Vec::new();
    let mut rest = whole;
    while rest > 0 {
        groups.insert(0, (rest % 10_000) as i16);
        rest /= 10_000;
    }
    let weight = groups.len() as i16 - 1;
    groups.push(fraction);
    let mut raw = Vec::new();
    raw.extend_from_slice(&(groups.len() as i16).to_be_bytes());
    raw.extend_from_slice(&weight.to_be_bytes());
    raw.extend_from_slice(&0u16.to_be_bytes());
    raw.extend_from_slice(&2u16.to_be_bytes());
    for g in groups {
        raw.extend_from_slice(&g.to_be_bytes());
    }
    raw
}

fn orders(n: i64) -> (Vec<EncodedColumn>, Vec<Row>) {
    let decimal = Scalar::Decimal {
        precision: 12,
        scale: 2,
    };
    let columns = [
        ("id", ValueKind::Int, Scalar::Int64),
        ("customer_name", ValueKind::Text, Scalar::Utf8),
        ("email", ValueKind::Text, Scalar::Utf8),
        ("amount", ValueKind::Numeric, decimal),
        ("category", ValueKind::Text, Scalar::Utf8),
        ("created_at", ValueKind::TimestampUtc, Scalar::TimestampUtc),
        ("note", ValueKind::Text, Scalar::Utf8),
    ]
    .map(|(name, kind, scalar)| EncodedColumn {
        columnar: Columnar { scalar, list: false },
        ..EncodedColumn::new(name, kind)
    })
    .to_vec();
    let rows = (1..=n)
        .map(|g| {
            vec![
                Some(g.to_be_bytes().to_vec()),
                Some(format!("Customer {g}").into_bytes()),
                Some(format!("customer{g}@example.com").into_bytes()),
                Some(numeric(g * 7919 % 100_000)),
                Some(
                    ["books", "games", "garden", "music", "tools"][(g % 5) as usize]
                        .as_bytes()
                        .to_vec(),
                ),
                Some((757_382_400_000_000i64 + g * 17_250_000).to_be_bytes().to_vec()),
                (g % 10 == 0).then(|| b"gift, wrap \"nicely\"".to_vec()),
            ]
        })
        .collect();
    (columns, rows)
}

/// An encoder of owned rows.
type Encoder = RowEncoder<[Option<Vec<u8>>]>;

fn encoder(format: Format, columns: &[EncodedColumn]) -> Encoder {
    format.encoder(columns).unwrap()
}

/// Encodes `rows` into `out`, ending the piece (a columnar format writes its batch there).
fn encode_all(encoder: &mut Encoder, rows: &[Row], out: &mut Vec<u8>) {
    out.clear();
    for row in rows {
        encoder.write_row(&row[..], out).unwrap();
    }
    encoder.end_piece(0, None, out).unwrap();
}

fn encoders(c: &mut Criterion) {
    let (columns, rows) = orders(10_000);
    let mut group = c.benchmark_group("encode_10k_orders");
    for format in [Format::Ndjson, Format::Csv, Format::Arrow] {
        let mut encoder = encoder(format, &columns);
        let mut out = Vec::with_capacity(4 << 20);
        encode_all(&mut encoder, &rows, &mut out);
        group.throughput(Throughput::Bytes(out.len() as u64));
        group.bench_function(format!("{format:?}"), |b| {
            b.iter(|| encode_all(&mut encoder, black_box(&rows), &mut out));
        });
    }
    // A whole Parquet file each time: its rows wait in the row group until the footer is written.
    let parquet_file = |out: &mut Vec<u8>| {
        let mut encoder = encoder(Format::Parquet, &columns);
        out.clear();
        encoder.write_header(out).unwrap();
        for row in &rows {
            encoder.write_row(&row[..], out).unwrap();
        }
        encoder.write_trailer(rows.len() as u64, out).unwrap();
    };
    let mut out = Vec::with_capacity(4 << 20);
    parquet_file(&mut out);
    group.throughput(Throughput::Bytes(out.len() as u64));
    group.bench_function("Parquet", |b| b.iter(|| parquet_file(black_box(&mut out))));
    group.finish();
}

fn compressors(c: &mut Criterion) {
    let (columns, rows) = orders(10_000);
    let mut ndjson = Vec::new();
    encode_all(&mut encoder(Format::Ndjson, &columns), &rows, &mut ndjson);
    let mut group = c.benchmark_group("compress_10k_orders_ndjson");
    group.throughput(Throughput::Bytes(ndjson.len() as u64));
    for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Brotli] {
        group.bench_function(format!("{encoding:?}"), |b| {
            b.iter(|| {
                let mut compressor = Compressor::new(encoding, &Levels::default()).unwrap().unwrap();
                for chunk in ndjson.chunks(32 * 1024) {
                    compressor.write(chunk).unwrap();
                }
                black_box(compressor.finish().unwrap().len())
            });
        });
    }
    group.finish();
}

/// What one 64 KiB slice of input costs at each codec's highest allowed level: the longest a worker's other
/// requests wait behind a streaming export (the pipeline yields between slices).
fn slices_at_the_highest_levels(c: &mut Criterion) {
    let (columns, rows) = orders(2_000);
    let mut ndjson = Vec::new();
    encode_all(&mut encoder(Format::Ndjson, &columns), &rows, &mut ndjson);
    let highest = Levels::highest();
    let mut group = c.benchmark_group("compress_64k_slice_at_highest_levels");
    group.throughput(Throughput::Bytes(64 * 1024));
    for encoding in [Encoding::Gzip, Encoding::Zstd, Encoding::Brotli] {
        let mut compressor = Compressor::new(encoding, &highest).unwrap().unwrap();
        // Warm: the window already full, as in a long export.
        for chunk in ndjson.chunks(64 * 1024).take(8) {
            compressor.write(chunk).unwrap();
        }
        let slice = &ndjson[..64 * 1024];
        group.bench_function(format!("{encoding:?}"), |b| {
            b.iter(|| {
                compressor.write(slice).unwrap();
                black_box(compressor.take(0).len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, encoders, compressors, slices_at_the_highest_levels);
criterion_main!(benches);
