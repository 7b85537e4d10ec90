//! A client of a Confluent-compatible Schema Registry: the part of its REST API batchlayer uses.
//!
//! * `GET /schemas/ids/{id}`: the schema a message's id names, `{"schema": "...", "schemaType":
//!   "..."}` (no `schemaType` for Avro); 404 with error code 40403 when the registry has no
//!   schema with that id (<https://docs.confluent.io/cloud/current/ccloud/get-schema/>).
//! * `POST /subjects/{subject}/versions` with `{"schema": "..."}`: registers a schema, answers
//!   `{"id": n}`; registering the same schema again answers the same id
//!   (<https://docs.confluent.io/cloud/current/ccloud/register/>).
//!
//! Requests and answers are `application/vnd.schemaregistry.v1+json`; errors are
//! `{"error_code": n, "message": "..."}`
//! (<https://docs.confluent.io/platform/current/schema-registry/develop/api.html>). Basic
//! authentication or a bearer token; https with the system CAs and an optional CA file.
//! Transient failures (connection refused or reset, timeouts, 5xx, 429) are retried with the
//! run's retry policy. Every error names the registry's URL (which holds no credentials), the
//! request, the HTTP status and the registry's own message.
//!
//! Also here: the Confluent wire format's header, which ingest reads from each message.

use crate::config::RegistrySettings;
use crate::util::{retry, transient_io, RetryPolicy};
use anyhow::{anyhow, bail, Context, Result};
use attohttpc::Session;
use serde::Deserialize;
use std::time::Duration;

/// The registry API's media type, sent as Content-Type and Accept.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The registry's error code for "schema not found" (with HTTP 404).
pub const SCHEMA_NOT_FOUND: i64 = 40403;

/// The schema id of a message in the Confluent wire format: byte 0 is the magic byte 0, bytes
/// 1..5 the schema id (big-endian), then the body
/// (<https://docs.confluent.io/platform/current/schema-registry/fundamentals/serdes-develop/index.html#wire-format>).
/// None for a message not so framed (shorter than 5 bytes, or another first byte).
#[inline]
pub fn framed_schema_id(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// A schema as the registry serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySchema {
    /// The schema text, as the registry returned it.
    pub schema: String,
    /// `AVRO`, `JSON` or `PROTOBUF`; the registry leaves it out for Avro, and so does this.
    pub schema_type: Option<String>,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
    #[serde(rename = "schemaType", default)]
    schema_type: Option<String>,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: i64,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error_code: Option<i64>,
    message: Option<String>,
}

/// Why one request failed: the retry policy retries transient ones.
enum Failure {
    Transport(attohttpc::Error),
    Status(u16, Vec<u8>),
}

impl Failure {
    fn transient(&self) -> bool {
        match self {
            Failure::Transport(e) => match e.kind() {
                attohttpc::ErrorKind::Io(io) => transient_io(io),
                _ => false,
            },
            Failure::Status(s, _) => *s == 429 || *s >= 500,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transport(e) => match e.kind() {
                // rustls reports a refused certificate as invalid data.
                attohttpc::ErrorKind::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                    write!(f, "TLS: {io}")
                }
                attohttpc::ErrorKind::Io(io) => write!(f, "cannot reach it: {io}"),
                _ => write!(f, "{e}"),
            },
            Failure::Status(s, body) => f.write_str(&describe_status(*s, body)),
        }
    }
}

/// "HTTP 401 (error code 401): Unauthorized": the status and the registry's own message (its
/// error body, else the start of whatever it sent).
fn describe_status(status: u16, body: &[u8]) -> String {
    match serde_json::from_slice::<ErrorAnswer>(body) {
        Ok(ErrorAnswer {
            error_code,
            message: Some(m),
        }) => match error_code {
            Some(c) => format!("HTTP {status} (error code {c}): {m}"),
            None => format!("HTTP {status}: {m}"),
        },
        _ => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            }
        }
    }
}

/// One registry, its session (TLS roots, timeouts) and credentials.
pub struct RegistryClient {
    base: url::Url,
    url: String,
    session: Session,
    auth: Option<String>,
    retry: RetryPolicy,
}

impl RegistryClient {
    pub fn new(s: &RegistrySettings) -> Result<Self> {
        let base =
            url::Url::parse(&s.url).with_context(|| format!("schema registry URL {}", s.url))?;
        let mut session = Session::new();
        session.connect_timeout(Duration::from_secs(10));
        session.read_timeout(Duration::from_secs(30));
        // A redirect would carry the credentials to wherever it points.
        session.follow_redirects(false);
        if let Some(path) = &s.ca_file {
            for der in pem_certificates(path)? {
                session.add_root_certificate(der.into());
            }
        }
        let auth = match (&s.username, &s.password, &s.bearer_token) {
            (Some(u), Some(p), _) => {
                use base64::Engine;
                let pair = format!("{u}:{}", p.expose());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (_, _, Some(t)) => Some(format!("Bearer {}", t.expose())),
            _ => None,
        };
        Ok(RegistryClient {
            base,
            url: s.url.clone(),
            session,
            auth,
            retry: s.retry,
        })
    }

    /// The registry's URL, as messages name it (it holds no credentials).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The schema with this id; None when the registry has none (404, error code 40403).
    pub fn schema_by_id(&self, id: u32) -> Result<Option<RegistrySchema>> {
        let id_text = id.to_string();
        match self.call(&["schemas", "ids", &id_text], None) {
            Ok(body) => {
                let a: SchemaAnswer = self.parse(&body, "GET", &format!("/schemas/ids/{id}"))?;
                Ok(Some(RegistrySchema {
                    schema: a.schema,
                    schema_type: a.schema_type.filter(|t| t != "AVRO"),
                }))
            }
            Err((Failure::Status(404, body), _)) if error_code(&body) == Some(SCHEMA_NOT_FOUND) => {
                Ok(None)
            }
            Err((f, note)) => Err(self.failed("GET", &format!("/schemas/ids/{id}"), &f, &note)),
        }
    }

    /// Registers an Avro schema under `subject` (or finds it registered); returns its id.
    pub fn register(&self, subject: &str, schema: &str) -> Result<u32> {
        let body = serde_json::json!({ "schema": schema });
        let path = format!("/subjects/{subject}/versions");
        match self.call(&["subjects", subject, "versions"], Some(&body)) {
            Ok(answer) => {
                let a: IdAnswer = self.parse(&answer, "POST", &path)?;
                u32::try_from(a.id).map_err(|_| {
                    anyhow!(
                        "schema registry {}: POST {path}: the id {} does not fit the wire format's 4 bytes",
                        self.url,
                        a.id
                    )
                })
            }
            Err((f, note)) => Err(self.failed("POST", &path, &f, &note)),
        }
    }

    fn parse<'a, T: Deserialize<'a>>(&self, body: &'a [u8], method: &str, path: &str) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| {
            anyhow!(
                "schema registry {}: {method} {path}: not the answer the registry API gives ({e}): {}",
                self.url,
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )
        })
    }

    fn failed(&self, method: &str, path: &str, f: &Failure, note: &str) -> anyhow::Error {
        anyhow!("schema registry {}: {method} {path}: {f}{note}", self.url)
    }

    /// One request (a GET, or a POST of `body`), retried while it fails transiently: the
    /// answer's body on a 2xx, else the last failure and the retries' note.
    fn call(
        &self,
        segments: &[&str],
        body: Option<&serde_json::Value>,
    ) -> std::result::Result<Vec<u8>, (Failure, String)> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        let method = if body.is_some() { "POST" } else { "GET" };
        let what = format!("schema registry {} {method} {}", self.url, url.path());
        retry(&self.retry, &what, Failure::transient, || {
            let auth = self.auth.as_deref();
            let sent = match body {
                Some(b) => {
                    let mut req = self
                        .session
                        .post(url.as_str())
                        .header("Accept", CONTENT_TYPE)
                        .header("Content-Type", CONTENT_TYPE);
                    if let Some(a) = auth {
                        req = req.header("Authorization", a);
                    }
                    req.bytes(serde_json::to_vec(b).expect("JSON")).send()
                }
                None => {
                    let mut req = self
                        .session
                        .get(url.as_str())
                        .header("Accept", CONTENT_TYPE);
                    if let Some(a) = auth {
                        req = req.header("Authorization", a);
                    }
                    req.send()
                }
            };
            let resp = sent.map_err(Failure::Transport)?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().map_err(Failure::Transport)?;
            if (200..300).contains(&status) {
                Ok(bytes)
            } else {
                Err(Failure::Status(status, bytes))
            }
        })
        .map_err(|g| {
            let note = g.note();
            (g.error, note)
        })
    }
}

/// The registry's error code in an error body, if it has one.
fn error_code(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<ErrorAnswer>(body)
        .ok()
        .and_then(|e| e.error_code)
}

/// The certificates (DER) of a PEM file: each `BEGIN CERTIFICATE` block, base64-decoded.
fn pem_certificates(path: &std::path::Path) -> Result<Vec<Vec<u8>>> {
    use base64::Engine;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("schema_registry.ca_file {}", path.display()))?;
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let Some(end) = after.find("-----END CERTIFICATE-----") else {
            bail!(
                "schema_registry.ca_file {}: a certificate has no END line",
                path.display()
            );
        };
        let b64: String = after[..end].split_whitespace().collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .with_context(|| {
                format!(
                    "schema_registry.ca_file {}: a certificate is not base64",
                    path.display()
                )
            })?;
        out.push(der);
        rest = &after[end..];
    }
    if out.is_empty() {
        bail!(
            "schema_registry.ca_file {}: no PEM certificate in it",
            path.display()
        );
    }
    Ok(out)
}

/// The registry stand-in (`tests/registry_standin.py`) as a child process, for the tests: on a
/// port of its own, stopped when dropped.
#[cfg(any(test, feature = "testing"))]
pub mod standin {
    use std::io::BufRead;
    use std::process::{Child, Command, Stdio};

    pub struct RegistryStandIn {
        child: Child,
        pub url: String,
        pub port: u16,
    }

    impl RegistryStandIn {
        /// Starts one on a free port; `env` sets its credentials
        /// (BATCHLAYER_STANDIN_REGISTRY_USER, _PASSWORD, _TOKEN).
        pub fn start(env: &[(&str, &str)]) -> RegistryStandIn {
            Self::start_on(0, env, None)
        }

        /// Starts one on `port` (0: a free one), keeping its schemas in `state` if given.
        pub fn start_on(
            port: u16,
            env: &[(&str, &str)],
            state: Option<&std::path::Path>,
        ) -> RegistryStandIn {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/registry_standin.py");
            let mut cmd = Command::new("python3");
            cmd.arg(script).args(["--port", &port.to_string()]);
            if let Some(s) = state {
                cmd.arg("--state").arg(s);
            }
            let mut child = cmd
                .envs(env.iter().copied())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting python3 tests/registry_standin.py");
            let mut line = String::new();
            std::io::BufReader::new(child.stdout.take().expect("stdout"))
                .read_line(&mut line)
                .expect("the stand-in's first line");
            let port: u16 = line
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("the stand-in said {line:?}"));
            RegistryStandIn {
                child,
                url: format!("http://127.0.0.1:{port}"),
                port,
            }
        }

        /// Stops it (as a crash would: nothing answers on its port afterwards).
        pub fn stop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for RegistryStandIn {
        fn drop(&mut self) {
            self.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::standin::RegistryStandIn;
    use super::*;
    use crate::config::Secret;
    use std::io::{Read, Write};

    fn settings(url: &str) -> RegistrySettings {
        RegistrySettings {
            url: url.into(),
            username: None,
            password: None,
            bearer_token: None,
            ca_file: None,
            retry: RetryPolicy {
                attempts: 3,
                initial: Duration::from_millis(5),
                max: Duration::from_millis(20),
            },
        }
    }

    const RECORD: &str = r#"{"type":"record","name":"T","fields":[{"name":"id","type":"long"}]}"#;

    #[test]
    fn the_wire_format_header_gives_the_schema_id() {
        assert_eq!(framed_schema_id(&[0, 0, 0, 0, 7, 2, 4]), Some(7));
        assert_eq!(framed_schema_id(&[0, 0, 0, 1, 0]), Some(256), "no body");
        assert_eq!(framed_schema_id(&[0, 255, 255, 255, 255]), Some(u32::MAX));
        assert_eq!(framed_schema_id(&[0, 0, 0, 7]), None, "too short");
        assert_eq!(
            framed_schema_id(&[1, 0, 0, 0, 7]),
            None,
            "another magic byte"
        );
        assert_eq!(framed_schema_id(b"1;2;3"), None);
        assert_eq!(framed_schema_id(b""), None);
    }

    #[test]
    fn registers_and_fetches_against_the_stand_in() {
        let sr = RegistryStandIn::start(&[]);
        let c = RegistryClient::new(&settings(&sr.url)).unwrap();
        assert_eq!(c.schema_by_id(1).unwrap(), None, "40403: no such id");
        let id = c.register("t-value", RECORD).unwrap();
        let spaced = RECORD.replace(',', ", ");
        assert_eq!(
            c.register("t-value", &spaced).unwrap(),
            id,
            "the same schema"
        );
        assert_eq!(
            c.register("other.topic-value", RECORD).unwrap(),
            id,
            "ids are global across subjects"
        );
        let other = c.register("t-value", r#""string""#).unwrap();
        assert_ne!(other, id);
        let got = c.schema_by_id(id).unwrap().unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&got.schema).unwrap(),
            serde_json::from_str::<serde_json::Value>(RECORD).unwrap()
        );
        assert_eq!(got.schema_type, None, "Avro");
        let err = format!(
            "{:#}",
            c.register("t-value", r#"{"type":"recrod"}"#).unwrap_err()
        );
        assert!(
            err.contains(&sr.url)
                && err.contains("POST /subjects/t-value/versions")
                && err.contains("HTTP 422 (error code 42201)"),
            "{err}"
        );
        // A base URL with a trailing path segment keeps it.
        let with_slash = RegistryClient::new(&settings(&format!("{}/", sr.url))).unwrap();
        assert_eq!(
            with_slash.schema_by_id(other).unwrap().unwrap().schema,
            r#""string""#
        );
    }

    #[test]
    fn basic_auth_and_bearer_tokens_are_sent_and_a_refusal_is_clear() {
        let sr = RegistryStandIn::start(&[
            ("BATCHLAYER_STANDIN_REGISTRY_USER", "alice"),
            ("BATCHLAYER_STANDIN_REGISTRY_PASSWORD", "s3cret-pw"),
            ("BATCHLAYER_STANDIN_REGISTRY_TOKEN", "tok-123"),
        ]);
        let mut s = settings(&sr.url);
        let err = format!(
            "{:#}",
            RegistryClient::new(&s)
                .unwrap()
                .schema_by_id(1)
                .unwrap_err()
        );
        assert!(
            err.contains("HTTP 401") && err.contains("Unauthorized"),
            "{err}"
        );
        s.username = Some("alice".into());
        s.password = Some(Secret::new("wrong-pw"));
        let c = RegistryClient::new(&s).unwrap();
        let err = format!("{:#}", c.register("t-value", RECORD).unwrap_err());
        assert!(
            err.contains(&format!(
                "schema registry {}: POST /subjects/t-value/versions: HTTP 401",
                sr.url
            )),
            "{err}"
        );
        assert!(!err.contains("wrong-pw"), "{err}");
        assert!(!err.contains("gave up"), "a refusal is not retried: {err}");
        s.password = Some(Secret::new("s3cret-pw"));
        let id = RegistryClient::new(&s)
            .unwrap()
            .register("t-value", RECORD)
            .unwrap();
        let token = RegistrySettings {
            username: None,
            password: None,
            bearer_token: Some(Secret::new("tok-123")),
            ..settings(&sr.url)
        };
        assert!(RegistryClient::new(&token)
            .unwrap()
            .schema_by_id(id)
            .unwrap()
            .is_some());
    }

    /// A server that answers each connection with the next of `answers` (status, body), and
    /// sends back the requests it read.
    fn scripted(answers: Vec<(u16, &'static str)>) -> (String, std::sync::mpsc::Receiver<String>) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (status, body) in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = c.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).unwrap();
            }
        });
        (url, rx)
    }

    #[test]
    fn transient_failures_are_retried_and_other_answers_are_errors_naming_the_registry() {
        let (url, rx) = scripted(vec![
            (503, r#"{"error_code":50003,"message":"forwarding failed"}"#),
            (200, r#"{"schema":"\"long\""}"#),
        ]);
        let c = RegistryClient::new(&settings(&url)).unwrap();
        let got = c.schema_by_id(9).unwrap().unwrap();
        assert_eq!(got.schema, "\"long\"");
        let req = rx.recv().unwrap();
        assert!(req.starts_with("GET /schemas/ids/9 HTTP/1.1"), "{req}");
        assert!(
            req.to_ascii_lowercase()
                .contains(&format!("accept: {CONTENT_TYPE}")),
            "{req}"
        );
        // A 404 that is not the registry's "schema not found" (a proxy, a wrong base path) is
        // an error, never "no such schema".
        let (url, _rx) = scripted(vec![(404, "<html>not here</html>")]);
        let err = format!(
            "{:#}",
            RegistryClient::new(&settings(&url))
                .unwrap()
                .schema_by_id(9)
                .unwrap_err()
        );
        assert!(
            err.contains(&url) && err.contains("HTTP 404: <html>not here</html>"),
            "{err}"
        );
        let (url, _rx) = scripted(vec![(200, "{\"id\": \"seven\"}")]);
        let err = format!(
            "{:#}",
            RegistryClient::new(&settings(&url))
                .unwrap()
                .register("s", "\"int\"")
                .unwrap_err()
        );
        assert!(
            err.contains(&url) && err.contains("not the answer the registry API gives"),
            "{err}"
        );
        let (url, _rx) = scripted(vec![(500, ""), (500, ""), (500, "")]);
        let err = format!(
            "{:#}",
            RegistryClient::new(&settings(&url))
                .unwrap()
                .schema_by_id(1)
                .unwrap_err()
        );
        assert!(err.contains("HTTP 500 (gave up after 3 attempts)"), "{err}");
        // Nothing listening.
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://{free}");
        let err = format!(
            "{:#}",
            RegistryClient::new(&settings(&url))
                .unwrap()
                .schema_by_id(1)
                .unwrap_err()
        );
        assert!(
            err.contains(&format!(
                "schema registry {url}: GET /schemas/ids/1: cannot reach it"
            )) && err.contains("gave up after 3 attempts"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_file_must_hold_pem_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not a certificate").unwrap();
        let mut s = settings("https://127.0.0.1:1");
        s.ca_file = Some(p.clone());
        let err = format!("{:#}", RegistryClient::new(&s).err().unwrap());
        assert!(err.contains("no PEM certificate"), "{err}");
        std::fs::write(
            &p,
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(pem_certificates(&p).unwrap(), vec![vec![0u8, 1, 2]]);
    }
}
