//! A chat-completions server on loopback for the tests, and helpers to build guards and
//! requests.
//!
//! The server checks the shape of every request (system and user messages, the image as a
//! `data:` URL, logprobs asked for in score mode) and answers with what the test's handler
//! returns: logprobs, plain text, an error status, or a reply after a delay.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use safeguard_core::guard::GuardRequest;
use safeguard_core::{Format, Policy};
use safeguard_remote::{RemoteConfig, RemoteGuard};
use serde_json::{json, Value};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The whole JSON body.
    pub body: Value,
    /// The `Authorization` header, if any.
    pub auth: Option<String>,
    /// The system message.
    pub system: String,
    /// The user text before the image.
    pub policy_block: String,
    /// The MIME type of the data URL.
    pub mime: String,
    /// The image, decoded from the data URL.
    pub image: Vec<u8>,
    /// The user text after the image.
    pub question: String,
}

impl Seen {
    /// Whether the request asked for one scored token.
    pub fn score_mode(&self) -> bool {
        self.body["max_tokens"] == 1
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A one-token answer: the first entry's token is the content, all are its top logprobs.
    Logprobs(Vec<(&'static str, f64)>),
    /// Content without any logprobs.
    Text(String),
    /// An error status with a body and an optional `Retry-After` in seconds.
    Status {
        code: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// The inner reply, after a delay.
    Sleep(Duration, Box<Reply>),
}

impl Reply {
    /// Logprobs for `unsafe` and `safe` (and a filler token).
    pub fn scores(unsafe_lp: f64, safe_lp: f64) -> Reply {
        let mut tokens = vec![("unsafe", unsafe_lp), ("safe", safe_lp), ("The", -6.0)];
        tokens.sort_by(|a, b| b.1.total_cmp(&a.1));
        Reply::Logprobs(tokens)
    }

    /// A status with an OpenAI-style error body.
    pub fn status(code: u16, message: &str) -> Reply {
        Reply::Status {
            code,
            body: json!({"error": {"message": message, "type": "error", "code": code}}).to_string(),
            retry_after: None,
        }
    }
}

/// Decides the reply from the request and the 0-based number of requests seen before it.
pub type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

/// A running test server (plain HTTP/1.1 on `std::net`, one thread per connection,
/// keep-alive); stops accepting when dropped.
pub struct MockServer {
    /// Base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    violations: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

/// What the connection threads share.
struct Shared {
    handler: Handler,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl MockServer {
    /// Starts a server on a free loopback port.
    pub fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            handler: Arc::new(handler),
            hits: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
            violations: Arc::new(Mutex::new(Vec::new())),
        });
        let (hits, seen, violations) = (
            shared.hits.clone(),
            shared.seen.clone(),
            shared.violations.clone(),
        );
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let shared = shared.clone();
                        std::thread::spawn(move || {
                            let _ = connection(stream, &shared);
                        });
                    }
                }
            })
        };
        MockServer {
            url: format!("http://{addr}/v1"),
            addr,
            stop,
            hits,
            seen,
            violations,
            thread: Some(thread),
        }
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Well-formed requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Panics if any request was malformed.
    pub fn assert_well_formed(&self) {
        let v = self.violations.lock().unwrap();
        assert!(v.is_empty(), "malformed requests: {v:?}");
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves the requests of one keep-alive connection until the client closes it.
fn connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let n = shared.hits.fetch_add(1, Ordering::SeqCst);
        let body = String::from_utf8_lossy(&body);
        let reply = if method != "POST" || path != "/v1/chat/completions" {
            Reply::status(404, &format!("no route {method} {path}"))
        } else {
            match check_shape(&body, header("authorization")) {
                Ok(s) => {
                    let reply = (shared.handler)(&s, n);
                    shared.seen.lock().unwrap().push(s);
                    reply
                }
                Err(problem) => {
                    shared.violations.lock().unwrap().push(problem.clone());
                    Reply::status(422, &format!("malformed request: {problem}"))
                }
            }
        };
        respond(&mut writer, reply)?;
    }
}

fn respond(writer: &mut TcpStream, reply: Reply) -> std::io::Result<()> {
    let (code, body, retry_after) = match reply {
        Reply::Sleep(d, inner) => {
            std::thread::sleep(d);
            return respond(writer, *inner);
        }
        Reply::Status {
            code,
            body,
            retry_after,
        } => (code, body, retry_after),
        Reply::Logprobs(tokens) => (200, logprobs_body(&tokens), None),
        Reply::Text(text) => (200, text_body(&text), None),
    };
    let mut head = format!(
        "HTTP/1.1 {code} Test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(s) = retry_after {
        head.push_str(&format!("Retry-After: {s}\r\n"));
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    writer.write_all(body.as_bytes())?;
    writer.flush()
}

fn logprobs_body(tokens: &[(&str, f64)]) -> String {
    let (first, first_lp) = tokens[0];
    let top: Vec<Value> = tokens
        .iter()
        .map(|(t, lp)| json!({"token": t, "logprob": lp, "bytes": t.as_bytes()}))
        .collect();
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": first},
            "logprobs": {"content": [{"token": first, "logprob": first_lp, "bytes": first.as_bytes(), "top_logprobs": top}]},
            "finish_reason": "length",
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101},
    })
    .to_string()
}

fn text_body(text: &str) -> String {
    json!({
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": "test",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": null,
            "finish_reason": "stop",
        }],
    })
    .to_string()
}

/// Checks a request body against the shape the remote guard must send.
fn check_shape(body: &str, auth: Option<String>) -> Result<Seen, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let text = |p: &str| -> Result<String, String> {
        v.pointer(p)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("no string at {p}"))
    };
    if text("/model")?.is_empty() {
        return Err("empty model".into());
    }
    let messages = v["messages"].as_array().ok_or("no messages array")?;
    if messages.len() != 2 {
        return Err(format!("{} messages, expected 2", messages.len()));
    }
    if text("/messages/0/role")? != "system" || text("/messages/1/role")? != "user" {
        return Err("roles are not system, user".into());
    }
    let system = text("/messages/0/content")?;
    let parts = v["messages"][1]["content"]
        .as_array()
        .ok_or("user content is not an array of parts")?;
    let types: Vec<&str> = parts.iter().filter_map(|p| p["type"].as_str()).collect();
    if types != ["text", "image_url", "text"] {
        return Err(format!("user parts are {types:?}"));
    }
    let policy_block = text("/messages/1/content/0/text")?;
    if !policy_block.starts_with("Safety policy:\n") {
        return Err(format!("policy block starts {policy_block:.40?}"));
    }
    let url = text("/messages/1/content/1/image_url/url")?;
    let rest = url
        .strip_prefix("data:")
        .ok_or("image URL is not a data URL")?;
    let (mime, data) = rest
        .split_once(";base64,")
        .ok_or("data URL is not base64")?;
    let image = base64::engine::general_purpose::STANDARD
        .decode(data)
        .map_err(|e| format!("bad base64: {e}"))?;
    let question = text("/messages/1/content/2/text")?;
    if v["temperature"] != 0 {
        return Err("temperature is not 0".into());
    }
    if v["max_tokens"] == 1 && (v["logprobs"] != true || v["top_logprobs"] != 20) {
        return Err("score mode without logprobs: true, top_logprobs: 20".into());
    }
    Ok(Seen {
        body: v.clone(),
        auth,
        system,
        policy_block,
        mime: mime.to_string(),
        image,
        question,
    })
}

/// A loopback URL where nothing listens.
pub fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// An example image's bytes.
pub fn image(name: &str) -> Vec<u8> {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "../../examples/images", name]
        .iter()
        .collect();
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A free-text policy: one call per image in score mode.
pub fn text_policy() -> Policy {
    Policy::from_text("custom", "No images of cats or other animals.").unwrap()
}

/// A structured policy with two prohibited rules and one allowed rule.
pub fn rules_policy() -> Policy {
    Policy::from_markdown(
        "test-rules",
        "## Prohibited\n### weapons: Weapons\nFirearms and knives.\n### gore: Gore\nBlood and injuries.\n## Allowed\n### art: Art\nPaintings and sculpture.\n",
    )
    .unwrap()
}

/// A guard for `urls` with short timings, changed by `tweak`.
pub fn guard(urls: &[&str], tweak: impl FnOnce(&mut RemoteConfig)) -> RemoteGuard {
    let mut cfg = RemoteConfig::new(
        urls.iter().map(|u| u.to_string()).collect(),
        "Qwen/Qwen2.5-VL-7B-Instruct".into(),
    );
    cfg.timeout = Duration::from_secs(5);
    cfg.backoff = Duration::from_millis(5);
    cfg.max_retries = 2;
    tweak(&mut cfg);
    RemoteGuard::new(cfg).unwrap()
}

/// A request for `image` under `policy`.
pub fn request<'a>(image: &'a [u8], policy: &'a Policy, format: Format) -> GuardRequest<'a> {
    GuardRequest {
        image,
        policy,
        format,
        threshold: 0.5,
    }
}
