//! Starting a server on `127.0.0.1:0` and the guards and images the tests use.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use safeguard_core::guard::Assessment;
use safeguard_core::{Error, Guard, GuardRequest, Judgement};
use safeguard_engine::{LocalGuard, LocalGuardOptions};
use safeguard_server::{ApiKeys, AppState, ServerConfig};
use tokio::sync::oneshot;

/// A running server; shut down gracefully on drop of the sender (or with [`TestServer::stop`]).
pub struct TestServer {
    pub url: String,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts `guard` behind the server.
    pub async fn start(guard: Arc<dyn Guard>, keys: ApiKeys, config: ServerConfig) -> Self {
        let state = Arc::new(AppState::new(guard, "tiny-guard", keys, config).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                safeguard_server::serve(listener, state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            }
        });
        Self {
            url,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Signals shutdown and waits until the server has finished its requests.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("graceful shutdown finishes")
                .unwrap();
        }
    }
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../safeguard-engine/tests/fixtures/tiny-guard")
}

/// The tiny trained checkpoint, loaded once per test binary.
pub fn tiny_guard() -> Arc<dyn Guard> {
    static GUARD: OnceLock<Arc<LocalGuard>> = OnceLock::new();
    GUARD
        .get_or_init(|| {
            Arc::new(LocalGuard::load(&fixtures(), LocalGuardOptions::default()).unwrap())
        })
        .clone()
}

/// image-a.png: unsafe under L3 (rule `sexual` hit).
pub fn image_a() -> Vec<u8> {
    std::fs::read(fixtures().join("image-a.png")).unwrap()
}

/// image-b.png: safe under L3.
pub fn image_b() -> Vec<u8> {
    std::fs::read(fixtures().join("image-b.png")).unwrap()
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn data_url(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", b64(bytes))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// A PNG whose header declares `width` x `height` (a decompression bomb when large): valid
/// signature, IHDR and CRCs, a token IDAT.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    chunk(&mut png, b"IHDR", &ihdr);
    // zlib stream of a few zero bytes (stored block): real data for the first rows only.
    chunk(
        &mut png,
        b"IDAT",
        &[
            0x78, 0x01, 0x01, 0x04, 0x00, 0xfb, 0xff, 0, 0, 0, 0, 0, 0x04, 0x00, 0x01,
        ],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

/// What the fake guards do.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Sleep, then answer safe.
    Slow(Duration),
    /// Fail with a backend error.
    Fail,
    /// A broken backend: answers *safe* with a NaN score (what `NaN >= threshold` gives).
    NanSafe,
}

/// A guard without a model, for load and failure tests.
pub struct FakeGuard(pub Behaviour);

impl Guard for FakeGuard {
    fn name(&self) -> &str {
        "fake"
    }

    fn judge(&self, requests: &[GuardRequest<'_>]) -> Vec<Result<Judgement, Error>> {
        let safe = |p_unsafe: f64, latency_ms: f64| {
            Ok(Judgement {
                verdict: Assessment::Safe,
                p_unsafe: Some(p_unsafe),
                rules_hit: Vec::new(),
                rules: Vec::new(),
                rationale: None,
                raw_output: None,
                note: None,
                backend: "fake".into(),
                latency_ms,
            })
        };
        match self.0 {
            Behaviour::Slow(d) => {
                std::thread::sleep(d);
                requests
                    .iter()
                    .map(|_| safe(0.1, d.as_secs_f64() * 1e3))
                    .collect()
            }
            Behaviour::NanSafe => requests.iter().map(|_| safe(f64::NAN, 0.0)).collect(),
            Behaviour::Fail => requests
                .iter()
                .map(|_| {
                    Err(Error::Backend {
                        backend: "fake".into(),
                        message: "out of memory".into(),
                    })
                })
                .collect(),
        }
    }
}

/// The `error.code` of an error body (panics when the body is not an error).
pub async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.expect("JSON error body");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error body: {body}"))
        .to_string();
    assert!(body["error"]["message"].is_string(), "{body}");
    (status, code)
}
