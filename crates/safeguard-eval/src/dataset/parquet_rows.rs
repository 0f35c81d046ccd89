//! Reading parquet rows with the parquet crate's record API (no arrow): file discovery,
//! column checks and projection, typed access to [`Field`] values with error messages
//! that name what was found, and the `datasets` library's ClassLabel columns (int64 in
//! parquet; their names only in the file's `huggingface` key-value metadata,
//! `{"info": {"features": {COLUMN: {"_type": "ClassLabel", "names": [...]}}}}`).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use parquet::basic::Type as PhysicalType;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use safeguard_core::Verdict;

use super::{file_name, DatasetFormat};
use crate::error::EvalError;

/// The parquet files of a dataset: the file itself, or every `.parquet` file under a
/// directory (recursively, as the hub lays them out in `data/`), sorted by path.
pub(crate) fn parquet_files(path: &Path) -> Result<Vec<PathBuf>, EvalError> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(EvalError::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    walk(path, &mut out)?;
    out.sort();
    if out.is_empty() {
        return Err(EvalError::NoDataFile {
            path: path.to_path_buf(),
            message: "no .parquet file in this directory or below".to_string(),
        });
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), EvalError> {
    for entry in std::fs::read_dir(dir).map_err(|e| EvalError::io(dir, e))? {
        let path = entry.map_err(|e| EvalError::io(dir, e))?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if super::has_ext(&path, &["parquet"]) {
            out.push(path);
        }
    }
    Ok(())
}

/// An open parquet file.
pub(crate) struct ParquetFile {
    pub(crate) path: PathBuf,
    reader: SerializedFileReader<File>,
    /// ClassLabel columns → their names (index = stored integer).
    class_labels: HashMap<String, Vec<String>>,
}

impl ParquetFile {
    pub(crate) fn open(path: &Path) -> Result<Self, EvalError> {
        let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| EvalError::parquet(path, e))?;
        let hf = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|kv| kv.key == "huggingface"))
            .and_then(|kv| kv.value.clone());
        let class_labels = match hf {
            Some(json) => class_labels(&json).map_err(|message| EvalError::NoDataFile {
                path: path.to_path_buf(),
                message: format!("the `huggingface` schema metadata: {message}"),
            })?,
            None => HashMap::new(),
        };
        Ok(ParquetFile {
            path: path.to_path_buf(),
            reader,
            class_labels,
        })
    }

    /// The names of a ClassLabel column (index = stored integer), when it is one.
    pub(crate) fn class_names(&self, column: &str) -> Option<&[String]> {
        self.class_labels.get(column).map(Vec::as_slice)
    }

    /// A string-like cell of `column` read through its ClassLabel names when it is a
    /// ClassLabel stored as an integer; a stored string is taken as written. `Ok(None)` for
    /// null or absent.
    pub(crate) fn label_text(&self, row: &Row, column: &str) -> Result<Option<String>, String> {
        let field = get(row, column);
        if let (Some(names), Some(index)) = (self.class_names(column), field.and_then(as_i64)) {
            return class_name(names, index).map(Some);
        }
        opt_string(field)
    }

    /// A label cell of `column` ([`verdict`]), read through its ClassLabel names when it has
    /// them: the name at the stored index must be a verdict word (`safe`/`unsafe`, any case).
    pub(crate) fn verdict(
        &self,
        row: &Row,
        column: &str,
        expected: &str,
    ) -> Result<Verdict, String> {
        let field = get(row, column);
        if let (Some(names), Some(index)) = (self.class_names(column), field.and_then(as_i64)) {
            let name = class_name(names, index)?;
            return Verdict::from_label(&name)
                .ok_or_else(|| format!("ClassLabel {index} is {name:?}, which is not {expected}"));
        }
        verdict(field, expected)
    }

    fn fields(&self) -> &[std::sync::Arc<Type>] {
        self.reader.metadata().file_metadata().schema().get_fields()
    }

    /// Top-level column names, in file order.
    pub(crate) fn columns(&self) -> Vec<String> {
        self.fields().iter().map(|f| f.name().to_string()).collect()
    }

    /// True when the file has this top-level column.
    pub(crate) fn has(&self, column: &str) -> bool {
        self.fields().iter().any(|f| f.name() == column)
    }

    /// True when the column is a string/binary leaf (not a number, not a group).
    pub(crate) fn is_byte_array(&self, column: &str) -> bool {
        self.fields().iter().any(|f| {
            f.name() == column && !f.is_group() && f.get_physical_type() == PhysicalType::BYTE_ARRAY
        })
    }

    /// Fails with [`EvalError::MissingColumn`] unless every column in `required` exists.
    pub(crate) fn require(
        &self,
        required: &[&str],
        format: DatasetFormat,
    ) -> Result<(), EvalError> {
        for column in required {
            if !self.has(column) {
                return Err(EvalError::MissingColumn {
                    path: self.path.clone(),
                    column: column.to_string(),
                    format,
                    found: self.columns().join(", "),
                });
            }
        }
        Ok(())
    }

    /// Iterates the rows, reading only the `wanted` columns that the file has (unknown
    /// extra columns such as long captions are never decoded).
    pub(crate) fn rows(
        &self,
        wanted: &[&str],
    ) -> Result<impl Iterator<Item = Result<Row, EvalError>> + '_, EvalError> {
        let fields: Vec<_> = self
            .fields()
            .iter()
            .filter(|f| wanted.contains(&f.name()))
            .cloned()
            .collect();
        let projection = Type::group_type_builder("schema")
            .with_fields(fields)
            .build()
            .map_err(|e| EvalError::parquet(&self.path, e))?;
        let iter = self
            .reader
            .get_row_iter(Some(projection))
            .map_err(|e| EvalError::parquet(&self.path, e))?;
        let path = self.path.clone();
        Ok(iter.map(move |row| row.map_err(|e| EvalError::parquet(&path, e))))
    }

    /// The file stem, used to build ids when rows carry none.
    pub(crate) fn stem(&self) -> String {
        self.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| file_name(&self.path))
    }
}

/// The ClassLabel columns of a `huggingface` metadata JSON.
fn class_labels(json: &str) -> Result<HashMap<String, Vec<String>>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let features = value.pointer("/info/features").and_then(|f| f.as_object());
    let mut out = HashMap::new();
    for (column, feature) in features.into_iter().flatten() {
        if feature.get("_type").and_then(|t| t.as_str()) != Some("ClassLabel") {
            continue;
        }
        let names = feature
            .get("names")
            .and_then(|n| n.as_array())
            .and_then(|n| n.iter().map(|v| v.as_str().map(str::to_string)).collect())
            .ok_or_else(|| format!("ClassLabel column `{column}` has no list of names"))?;
        out.insert(column.clone(), names);
    }
    Ok(out)
}

/// The name of ClassLabel index `index`; -1 (the `datasets` library's "no label") and
/// out-of-range indexes are error messages.
fn class_name(names: &[String], index: i64) -> Result<String, String> {
    usize::try_from(index)
        .ok()
        .and_then(|i| names.get(i))
        .cloned()
        .ok_or_else(|| {
            format!(
                "ClassLabel index {index} is not one of the column's {} names ({})",
                names.len(),
                names.join(", ")
            )
        })
}

/// The value of a top-level column in a row; `None` when the row lacks the column.
pub(crate) fn get<'r>(row: &'r Row, name: &str) -> Option<&'r Field> {
    row.get_column_iter()
        .find(|(column, _)| column.as_str() == name)
        .map(|(_, field)| field)
}

/// What a field holds, for error messages.
pub(crate) fn describe(field: &Field) -> String {
    match field {
        Field::Null => "null".to_string(),
        Field::Bool(b) => format!("boolean {b}"),
        Field::Str(s) => format!("string {:?}", truncate(s)),
        Field::Bytes(b) => format!("{} bytes of binary", b.len()),
        Field::Group(_) => "a struct".to_string(),
        Field::ListInternal(_) => "a list".to_string(),
        Field::MapInternal(_) => "a map".to_string(),
        Field::Float(_) | Field::Double(_) | Field::Float16(_) | Field::Decimal(_) => {
            format!("number {field}")
        }
        other if as_i64(other).is_some() => format!("integer {other}"),
        other => format!("value {other}"),
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// An integer field as `i64`.
pub(crate) fn as_i64(field: &Field) -> Option<i64> {
    Some(match *field {
        Field::Byte(v) => v.into(),
        Field::Short(v) => v.into(),
        Field::Int(v) => v.into(),
        Field::Long(v) => v,
        Field::UByte(v) => v.into(),
        Field::UShort(v) => v.into(),
        Field::UInt(v) => v.into(),
        Field::ULong(v) => i64::try_from(v).ok()?,
        _ => return None,
    })
}

/// A string field: `Ok(None)` for null or absent, an error message for another type.
/// Binary values that are valid UTF-8 are accepted (some writers drop the string
/// annotation).
pub(crate) fn opt_string(field: Option<&Field>) -> Result<Option<String>, String> {
    match field {
        None | Some(Field::Null) => Ok(None),
        Some(Field::Str(s)) => Ok(Some(s.clone())),
        Some(Field::Bytes(b)) => match std::str::from_utf8(b.data()) {
            Ok(s) => Ok(Some(s.to_string())),
            Err(_) => Err("expected a string, found binary data that is not UTF-8".to_string()),
        },
        Some(other) => Err(format!("expected a string, found {}", describe(other))),
    }
}

/// A non-empty string field.
pub(crate) fn req_string(field: Option<&Field>) -> Result<String, String> {
    match opt_string(field)? {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err("empty string".to_string()),
        None => Err("missing value (null)".to_string()),
    }
}

/// The parts of an image column: a struct `{bytes, path}` as `datasets` writes it, or a
/// plain binary column.
#[derive(Debug, Default)]
pub(crate) struct ImageCell<'r> {
    pub(crate) bytes: Option<&'r [u8]>,
    pub(crate) path: Option<String>,
}

/// Reads an image cell; an error message for any other shape.
pub(crate) fn image_cell(field: Option<&Field>) -> Result<ImageCell<'_>, String> {
    match field {
        None | Some(Field::Null) => Ok(ImageCell::default()),
        Some(Field::Bytes(b)) => Ok(ImageCell {
            bytes: Some(b.data()),
            path: None,
        }),
        Some(Field::Group(group)) => {
            let bytes = match get(group, "bytes") {
                None | Some(Field::Null) => None,
                Some(Field::Bytes(b)) => Some(b.data()),
                Some(other) => {
                    return Err(format!("`bytes` must be binary, found {}", describe(other)))
                }
            };
            let path = opt_string(get(group, "path")).map_err(|e| format!("`path`: {e}"))?;
            Ok(ImageCell {
                bytes: bytes.filter(|b| !b.is_empty()),
                path: path.filter(|p| !p.trim().is_empty()),
            })
        }
        Some(other) => Err(format!(
            "expected a struct {{bytes, path}} or binary, found {}",
            describe(other)
        )),
    }
}

/// A label cell: 0/1 (1 = unsafe) as any integer type, a boolean (true = unsafe), or the
/// strings `0`/`1`/`safe`/`unsafe` in any case. `expected` says what the format documents.
pub(crate) fn verdict(field: Option<&Field>, expected: &str) -> Result<Verdict, String> {
    let field = match field {
        None | Some(Field::Null) => return Err("missing value (null)".to_string()),
        Some(field) => field,
    };
    if let Some(v) = as_i64(field) {
        return match v {
            0 => Ok(Verdict::Safe),
            1 => Ok(Verdict::Unsafe),
            other => Err(format!("expected {expected}, found {other}")),
        };
    }
    match field {
        Field::Bool(true) => Ok(Verdict::Unsafe),
        Field::Bool(false) => Ok(Verdict::Safe),
        Field::Str(s) => {
            Verdict::from_label(s).ok_or_else(|| format!("expected {expected}, found {s:?}"))
        }
        other => Err(format!("expected {expected}, found {}", describe(other))),
    }
}

/// An id cell: a non-empty string or an integer.
pub(crate) fn id(field: Option<&Field>) -> Result<Option<String>, String> {
    match field {
        Some(f) if as_i64(f).is_some() => Ok(as_i64(f).map(|v| v.to_string())),
        other => match opt_string(other)? {
            Some(s) if s.trim().is_empty() => Err("empty id".to_string()),
            s => Ok(s),
        },
    }
}
