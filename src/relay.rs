//! Relays the webhooks the bridge does not publish to the app's own callback handler
//! (`BRIDGE_RELAY_URL`, or its old name `BRIDGE_FORWARD_URL`).
//!
//! Tencent has one webhook URL per app. An app that already answered some callbacks itself (a
//! "before" callback that moderates messages, say) and now points that URL at the bridge would lose
//! them; the relay hands each such request on, with its query string and body as Tencent sent them
//! (the `Sign` travels along, so the handler can check it as before), and returns the handler's status
//! and body to Tencent. Tencent waits 2 s for an answer, so the relay waits at most
//! `BRIDGE_FORWARD_TIMEOUT_MS`; when the handler fails or is late, the caller answers the allow
//! envelope itself, which for a "before" callback means "proceed unchanged", as Tencent's own timeout
//! would.
//!
//! reqwest, because it already is in the build (the test suite's HTTP client) and keeps connections
//! open between requests.

use std::time::Duration;

/// The largest answer body relayed; a larger one counts as a failed relay (Tencent's answers are a
/// small JSON envelope, sometimes with a replacement message body).
pub const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why a request could not be relayed. The caller answers the allow envelope instead.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the handler did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("could not reach the handler: {0}")]
    Unreachable(String),
    #[error("the handler's answer is over {MAX_ANSWER_BYTES} bytes")]
    AnswerTooLarge,
}

/// Why the relay could not be set up (at start).
#[derive(Debug, thiserror::Error)]
pub enum RelaySetupError {
    #[error("cannot read the CA certificates at {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The handler's answer, to be returned to Tencent as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// The HTTP client towards the handler; one per bridge, cloned cheaply.
#[derive(Debug, Clone)]
pub struct Relay {
    client: reqwest::Client,
    url: String,
    timeout: Duration,
}

/// Where the system keeps its CA bundle when `SSL_CERT_FILE` does not say (Debian, Alpine, RHEL).
const CA_FILES: &[&str] = &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt"];

impl Relay {
    /// A relay to `url` (`http://` or `https://`; for `https://` the system's CA bundle is trusted,
    /// or the file `SSL_CERT_FILE` names).
    pub fn new(url: String, timeout: Duration) -> Result<Self, RelaySetupError> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .tls_built_in_root_certs(false);
        if url.starts_with("https://") {
            let path = std::env::var("SSL_CERT_FILE").ok().or_else(|| {
                CA_FILES.iter().find(|p| std::path::Path::new(p).exists()).map(|p| p.to_string())
            });
            let path = path.ok_or_else(|| RelaySetupError::CaFile {
                path: CA_FILES.join(" or "),
                reason: "no such file (set SSL_CERT_FILE)".into(),
            })?;
            let ca_error = |reason: String| RelaySetupError::CaFile { path: path.clone(), reason };
            let pem = std::fs::read(&path).map_err(|e| ca_error(e.to_string()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ca_error(e.to_string()))? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().map_err(|e| RelaySetupError::Client(e.to_string()))?;
        Ok(Self { client, url, timeout })
    }

    /// POSTs `body` to the handler with Tencent's `query` string appended, and reads its answer, all
    /// within the relay's timeout.
    /// `arrived`: when the webhook arrived. The timeout counts from then, so reading a slow request
    /// body leaves less time to the handler and the answer still reaches Tencent within its 2 s.
    pub async fn relay(
        &self,
        query: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        arrived: tokio::time::Instant,
    ) -> Result<Answer, RelayError> {
        let sep = if self.url.contains('?') { '&' } else { '?' };
        let url = format!("{}{sep}{query}", self.url);
        let exchange = async {
            let mut request = self.client.post(url).body(body);
            if let Some(ct) = content_type {
                request = request.header(reqwest::header::CONTENT_TYPE, ct);
            }
            let mut response = request.send().await.map_err(|e| self.failed(e))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(e))? {
                if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(RelayError::AnswerTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { status, content_type, body })
        };
        // reqwest's own timeout covers the exchange too; this one also bounds reading the body.
        tokio::time::timeout_at(arrived + self.timeout, exchange)
            .await
            .unwrap_or(Err(RelayError::Timeout(self.timeout)))
    }

    fn failed(&self, e: reqwest::Error) -> RelayError {
        if e.is_timeout() {
            RelayError::Timeout(self.timeout)
        } else {
            // The chain names the cause (refused, reset, certificate). Not the URL: it carries
            // Tencent's query, whose Sign would let a reader of the logs forge callbacks for a minute.
            let e = e.without_url();
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            RelayError::Unreachable(text)
        }
    }
}
