//! Reading parquet rows with the parquet crate's record API (no arrow): file discovery,
//! column checks and projection, and typed access to [`Field`] values with error messages
//! that name what was found.

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
}

impl ParquetFile {
    pub(crate) fn open(path: &Path) -> Result<Self, EvalError> {
        let file = File::open(path).map_err(|e| EvalError::io(path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| EvalError::parquet(path, e))?;
        Ok(ParquetFile {
            path: path.to_path_buf(),
            reader,
        })
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
