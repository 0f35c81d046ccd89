//! The one error type of `safeguard-core`.

use std::path::PathBuf;

/// Everything that can go wrong in `safeguard-core`. Each variant names the input at fault
/// and, where it helps, what would fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A policy file is not valid UTF-8.
    #[error("{} is not UTF-8 text", path.display())]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A policy is larger than [`crate::policy::MAX_POLICY_BYTES`].
    #[error("policy is {bytes} bytes; at most {max} bytes are accepted")]
    TooLarge {
        /// Size of the policy text.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A policy file has an extension we cannot parse.
    #[error(
        "{}: unknown policy file extension {extension:?}; use .md, .toml or .txt",
        path.display()
    )]
    UnknownExtension {
        /// The file.
        path: PathBuf,
        /// Its extension (empty when it has none).
        extension: String,
    },
    /// A single word that is neither a preset nor a file.
    #[error("unknown policy {name:?}: not a preset ({known}) nor an existing file; raw policy text must be more than one word")]
    UnknownPreset {
        /// What was given.
        name: String,
        /// Comma-separated preset names.
        known: String,
    },
    /// A policy with no text and no rules.
    #[error("policy is empty: give it some text or at least one rule")]
    Empty,
    /// More rules than [`crate::policy::MAX_RULES`].
    #[error("policy has {count} rules; at most {max} are accepted")]
    TooManyRules {
        /// Rules declared.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A rule id with characters outside `[A-Za-z0-9_./-]`, empty or too long.
    #[error("rule id {id:?} is invalid: use 1-64 ASCII letters, digits, '_', '-', '.' or '/'")]
    BadRuleId {
        /// The id.
        id: String,
    },
    /// A rule without a title.
    #[error("rule {id:?} has an empty title")]
    EmptyRuleTitle {
        /// The rule's id.
        id: String,
    },
    /// Two rules with the same id.
    #[error("rule id {id:?} is declared twice")]
    DuplicateRule {
        /// The repeated id.
        id: String,
    },
    /// A rule id that the policy does not declare.
    #[error("policy {policy:?} has no rule {id:?}; its rules are: {known}")]
    UnknownRule {
        /// The id asked for.
        id: String,
        /// The policy's name.
        policy: String,
        /// Its rule ids.
        known: String,
    },
    /// A Markdown policy that does not follow the format.
    #[error("line {line}: {message}")]
    Markdown {
        /// 1-based line number.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A TOML policy that does not parse or has the wrong fields.
    #[error("invalid TOML policy: {message}")]
    Toml {
        /// The parser's message, with line and column.
        message: String,
    },
    /// An error inside a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What was wrong in it.
        #[source]
        source: Box<Error>,
    },
    /// A predictions row that cannot be used.
    #[error("line {line}: {message}")]
    Predictions {
        /// 1-based line number in the file (the header is line 1 in a CSV file).
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A predictions file without any row.
    #[error("no prediction rows found")]
    NoPredictions,
    /// An image that cannot be used (unreadable, too large, corrupt).
    #[error("invalid image: {message}")]
    InvalidImage {
        /// What is wrong with it.
        message: String,
    },
    /// A backend failed to produce a judgement.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// What went wrong.
        message: String,
    },
    /// A backend produced a number that is not finite (a NaN or infinite logit, score or rule
    /// score: overflow in low precision, a corrupt weight). The image is not judged; such a
    /// number never becomes a verdict, least of all *safe*.
    #[error("{backend} backend: {what} is not finite ({value}); the image cannot be judged (overflow or a corrupt weight; try --dtype f32)")]
    NonFinite {
        /// The backend's name.
        backend: String,
        /// Which number (e.g. `p_unsafe`, `score of rule O3`, `logit of token 151645`).
        what: String,
        /// The number as printed (`NaN`, `inf`, `-inf`).
        value: String,
    },
    /// A remote (OpenAI-compatible) endpoint failed, or answered something that cannot be
    /// used. Never carries a credential.
    #[error("remote endpoint {endpoint}: {reason}")]
    Remote {
        /// The endpoint's URL, without any user name or password.
        endpoint: String,
        /// What went wrong: the HTTP status and the server's (truncated) message when it
        /// answered, the attempts made when it was retried.
        reason: String,
        /// The HTTP status, when the server answered with one.
        status: Option<u16>,
        /// The transport error beneath (connection refused, timed out…), when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A backend's model output from which no verdict could be read. The caller picks the
    /// fallback ([`crate::verdict::OnUnparsable`]); the whole output is kept for it.
    #[error("{backend} backend: no verdict in the model output ({reason}): {}", excerpt(.output))]
    Unparsable {
        /// The backend's name.
        backend: String,
        /// Why no verdict could be read.
        reason: crate::verdict::NoVerdict,
        /// The model's whole output.
        output: String,
    },
    /// A guard prompt template that cannot be used (see [`crate::template`]).
    #[error("prompt template: {message}")]
    Template {
        /// What is wrong, naming the table or key.
        message: String,
    },
    /// An unknown value for a command-line or configuration choice.
    #[error("unknown {what} {value:?}; expected one of: {expected}")]
    UnknownChoice {
        /// What was being chosen (e.g. "output format").
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
}

impl Error {
    /// Wraps this error with the file it happened in (unless it already names one).
    pub fn in_file(self, path: &std::path::Path) -> Error {
        match self {
            Error::Io { .. } | Error::NotUtf8 { .. } | Error::InFile { .. } => self,
            other => Error::InFile {
                path: path.to_path_buf(),
                source: Box::new(other),
            },
        }
    }
}

/// The start of a model output, quoted, for error messages (at most 200 characters).
fn excerpt(output: &str) -> String {
    const MAX: usize = 200;
    match output.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{:?}…", &output[..cut]),
        None => format!("{output:?}"),
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
