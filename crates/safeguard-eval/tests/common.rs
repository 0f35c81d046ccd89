//! Fixture helpers shared by the test modules.

use std::path::{Path, PathBuf};

/// A tiny valid PNG (1×1 pixel).
pub const PNG_1X1: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53,
    0xde, 0x00, 0x00, 0x00, 0x0c, 0x49, 0x44, 0x41, 0x54, 0x08, 0xd7, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x00, 0x03, 0x01, 0x01, 0x00, 0x18, 0xdd, 0x8d, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e,
    0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Writes `name` under `dir` (creating parent directories) and returns its path.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Writes image files with these names (relative to `dir`).
pub fn images(dir: &Path, names: &[&str]) {
    for name in names {
        write(dir, name, PNG_1X1);
    }
}

/// One leaf column of a hand-written parquet file, in schema order.
pub enum Leaf {
    /// Optional byte arrays (strings or binary) at this maximum definition level.
    Bytes(Vec<Option<Vec<u8>>>, i16),
    /// Optional top-level 64-bit integers.
    I64(Vec<Option<i64>>),
    /// Optional top-level doubles.
    F64(Vec<Option<f64>>),
}

/// Strings as a byte-array leaf.
pub fn strs(values: &[Option<&str>], max_def: i16) -> Leaf {
    Leaf::Bytes(
        values
            .iter()
            .map(|v| v.map(|s| s.as_bytes().to_vec()))
            .collect(),
        max_def,
    )
}

/// Writes a parquet file with any schema (message type text) and its leaves, for odd
/// fixtures the demo writer cannot produce (missing columns, wrong types).
pub fn write_parquet(path: &Path, schema: &str, leaves: Vec<Leaf>) {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let schema = Arc::new(parquet::schema::parser::parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().build());
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for leaf in leaves {
        let mut column = group.next_column().unwrap().unwrap();
        match leaf {
            Leaf::Bytes(values, max_def) => {
                let defs: Vec<i16> = values
                    .iter()
                    .map(|v| if v.is_some() { max_def } else { max_def - 1 })
                    .collect();
                let present: Vec<ByteArray> =
                    values.into_iter().flatten().map(ByteArray::from).collect();
                column
                    .typed::<ByteArrayType>()
                    .write_batch(&present, Some(&defs), None)
                    .unwrap();
            }
            Leaf::I64(values) => {
                let defs: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
                let present: Vec<i64> = values.into_iter().flatten().collect();
                column
                    .typed::<Int64Type>()
                    .write_batch(&present, Some(&defs), None)
                    .unwrap();
            }
            Leaf::F64(values) => {
                let defs: Vec<i16> = values.iter().map(|v| i16::from(v.is_some())).collect();
                let present: Vec<f64> = values.into_iter().flatten().collect();
                column
                    .typed::<DoubleType>()
                    .write_batch(&present, Some(&defs), None)
                    .unwrap();
            }
        }
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}
