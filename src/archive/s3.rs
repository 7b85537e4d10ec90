//! S3 (and S3-compatible) object store via rust-s3, synchronous.

use super::{ObjectMeta, ObjectStore, PutOutcome, StoreError};
use crate::config::{ArchiveLocation, AwsChain, Secret};
use crate::error::Error;
use crate::util::{retry, transient_io, RetryPolicy, Tally};
use anyhow::{anyhow, bail, Context, Result};
use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};
use std::io::Write;
use std::path::Path;

/// Files up to this size go up in one conditional PUT whose body streams from the file;
/// larger ones as multipart uploads (retried part by part).
const SINGLE_PUT_MAX: u64 = 64 << 20;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
const PART_SIZE: usize = 5 << 20;

pub struct S3Store {
    bucket: Box<Bucket>,
    name: String,
    prefix: String,
    endpoint: String,
    /// Which credential source was used (never the values).
    source: String,
    retry: RetryPolicy,
}

/// An S3 error after retries, with how many attempts were made.
#[derive(Debug)]
struct Tried(S3Error, u32);

/// Whether a retry can cure an S3 error: 5xx (SlowDown is 503), 429, 408, or a connection
/// that was refused, reset or timed out. A TLS or auth failure is not retried.
fn transient(e: &S3Error) -> bool {
    match e {
        S3Error::HttpFailWithBody(code, body) => {
            *code >= 500 || *code == 429 || *code == 408 || body.contains("SlowDown")
        }
        S3Error::Atto(a) => match a.kind() {
            attohttpc::ErrorKind::Io(io) => transient_io(io),
            _ => false,
        },
        S3Error::Io(io) => transient_io(io),
        _ => false,
    }
}

/// The AWS credential chain, in the order AWS tools use: keys from the environment or the
/// config file (with a session token), the profile in the shared credentials file, then in
/// the config file, web identity (AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE), container
/// credentials (ECS/EKS), EC2 instance metadata; else anonymous. Returns the credentials and
/// the name of their source. Temporary credentials carry their expiry, and rust-s3 refreshes
/// them from the same source before a request once they have expired.
pub(crate) fn credentials(
    id: &Option<String>,
    secret: &Option<Secret>,
    token: &Option<Secret>,
    chain: &AwsChain,
) -> Result<(Credentials, String)> {
    match (id, secret) {
        (Some(id), Some(secret)) => {
            let token = token.as_ref().map(|t| t.expose());
            let c = Credentials::new(Some(id), Some(secret.expose()), None, token, None)
                .map_err(|_| Error::config("invalid S3 credentials"))?;
            let what = if token.is_some() {
                "access keys with a session token"
            } else {
                "access keys"
            };
            return Ok((c, format!("{what} (environment or config file)")));
        }
        (None, None) => {}
        _ => {
            return Err(Error::config(
                "S3 credentials need both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            )
            .into())
        }
    }
    let profile = chain.profile.as_deref().unwrap_or("default");
    if chain.credentials_file.is_file() {
        if let Ok(c) = Credentials::from_credentials_file(&chain.credentials_file, Some(profile)) {
            let f = chain.credentials_file.display();
            return Ok((c, format!("profile {profile} in {f}")));
        }
    }
    if let Some(c) = config_file_keys(&chain.config_file, profile)? {
        let f = chain.config_file.display();
        return Ok((c, format!("profile {profile} in {f}")));
    }
    if chain.profile.is_some() {
        return Err(Error::config(format!(
            "AWS profile {profile} has no keys in {} or {}",
            chain.credentials_file.display(),
            chain.config_file.display()
        ))
        .into());
    }
    if let Ok(c) = Credentials::from_sts_env("batchlayer") {
        return Ok((
            c,
            "web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)".into(),
        ));
    }
    if let Ok(c) = Credentials::from_container_credentials_provider() {
        return Ok((c, "container credentials endpoint".into()));
    }
    if chain.instance_metadata {
        // Off EC2 (no EC2 hypervisor or board vendor) this fails at once, without a request.
        if let Ok(c) = Credentials::from_instance_metadata_v2(false) {
            return Ok((c, "EC2 instance metadata".into()));
        }
    }
    let c = Credentials::anonymous().map_err(|_| anyhow!("S3 credentials"))?;
    Ok((c, "none found: anonymous requests".into()))
}

/// Static keys of a profile in the AWS config file (`[default]` or `[profile NAME]`).
fn config_file_keys(file: &Path, profile: &str) -> Result<Option<Credentials>> {
    if !file.is_file() {
        return Ok(None);
    }
    let ini = ini::Ini::load_from_file(file)
        .map_err(|e| Error::config(format!("AWS config file {}: {e}", file.display())))?;
    let section = if profile == "default" {
        "default".to_string()
    } else {
        format!("profile {profile}")
    };
    let Some(sec) = ini.section(Some(section)) else {
        return Ok(None);
    };
    let (Some(id), Some(secret)) = (
        sec.get("aws_access_key_id"),
        sec.get("aws_secret_access_key"),
    ) else {
        return Ok(None);
    };
    let c = Credentials::new(
        Some(id),
        Some(secret),
        None,
        sec.get("aws_session_token"),
        None,
    )
    .map_err(|_| Error::config(format!("AWS config file {}: bad keys", file.display())))?;
    Ok(Some(c))
}

impl S3Store {
    /// A listing of `prefix`, all of it or (with a delimiter) only its folder's objects.
    fn list_with(&self, prefix: &str, delimiter: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let pages = self
            .call("LIST", || {
                self.bucket
                    .list(self.full(prefix), delimiter.map(str::to_string))
            })
            .map_err(|e| self.explain(&e))
            .with_context(|| format!("listing {}", self.url(prefix)))?;
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out: Vec<ObjectMeta> = pages
            .into_iter()
            .flat_map(|p| p.contents)
            .filter_map(|o| {
                o.key.strip_prefix(&strip).map(|k| ObjectMeta {
                    key: k.to_string(),
                    size: o.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub fn new(loc: &ArchiveLocation) -> Result<Self> {
        let ArchiveLocation::S3 {
            bucket,
            prefix,
            endpoint,
            region,
            path_style,
            access_key_id,
            secret_access_key,
            session_token,
            chain,
        } = loc
        else {
            bail!("not an S3 location");
        };
        let (creds, source) = credentials(access_key_id, secret_access_key, session_token, chain)?;
        let reg = match endpoint {
            Some(ep) => Region::Custom {
                region: region.clone(),
                endpoint: ep.clone(),
            },
            None => region
                .parse()
                .map_err(|_| Error::config(format!("unknown AWS region {region:?}")))?,
        };
        // batchlayer retries transient errors itself, bounded and visible under -v.
        s3::set_retries(0);
        let mut b = Bucket::new(bucket, reg, creds)
            .map_err(|e| anyhow!("S3 bucket {bucket}: {}", short(&e)))?;
        if *path_style {
            b = b.with_path_style();
        }
        Ok(S3Store {
            bucket: b,
            name: bucket.clone(),
            prefix: prefix.clone(),
            endpoint: endpoint.clone().unwrap_or_else(|| "aws".into()),
            source,
            retry: RetryPolicy::default(),
        })
    }

    /// Retries transient errors as the policy says (rust-s3's own silent retry is off).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// One S3 request, retried while its error is transient.
    fn call<T>(&self, what: &str, op: impl FnMut() -> Result<T, S3Error>) -> Result<T, Tried> {
        let label = format!("S3 {what} at {}", self.endpoint);
        retry(&self.retry, &label, |e: &S3Error| transient(e), op)
            .map_err(|g| Tried(g.error, g.attempts))
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.name, self.full(key))
    }

    /// Turns an S3 error into a one-line reason an operator can act on, saying how often it
    /// was tried.
    fn explain(&self, t: &Tried) -> anyhow::Error {
        let e = self.explain_one(&t.0);
        if t.1 > 1 {
            anyhow!("{e:#} (gave up after {} attempts)", t.1)
        } else {
            e
        }
    }

    fn explain_one(&self, e: &S3Error) -> anyhow::Error {
        match e {
            S3Error::HttpFailWithBody(code, body) => {
                let s3code = xml_tag(body, "Code").unwrap_or_default();
                match (code, s3code.as_str()) {
                    (404, "NoSuchBucket") => anyhow!("bucket {} does not exist at {}", self.name, self.endpoint),
                    (403, _) | (_, "SignatureDoesNotMatch") | (_, "InvalidAccessKeyId") => anyhow!(
                        "access denied to bucket {} at {} ({}; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
                        self.name, self.endpoint, if s3code.is_empty() { "HTTP 403".into() } else { s3code }
                    ),
                    _ => anyhow!("S3 answered HTTP {code} {s3code} at {}", self.endpoint),
                }
            }
            other => anyhow!("S3 at {}: {}", self.endpoint, short(other)),
        }
    }

    /// Uploads a large file in 5 MiB parts, one at a time, reusing one buffer: memory stays
    /// flat whatever the object size. The completion is conditional (`If-None-Match: *`): a
    /// key that exists by then (another writer won) is `AlreadyExists` and nothing is
    /// replaced; a completion answered 200 with an error body is an error (rust-s3 checks the
    /// body's root element). A failed or refused upload is aborted.
    pub fn put_multipart_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        use std::io::Read;
        let full = self.full(key);
        let ct = "application/octet-stream";
        let up = self
            .call("initiate multipart upload", || {
                self.bucket.initiate_multipart_upload(&full, ct)
            })
            .map_err(|e| self.explain(&e))?;
        let result = (|| -> Result<PutOutcome> {
            let mut f = std::fs::File::open(path)?;
            let mut buf = vec![0u8; PART_SIZE];
            let mut parts = Vec::new();
            for number in 1u32.. {
                let mut filled = 0;
                while filled < buf.len() {
                    let n = f.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 && number > 1 {
                    break;
                }
                let part = self
                    .call("upload part", || {
                        self.bucket.put_multipart_chunk(
                            &buf[..filled],
                            &full,
                            number,
                            &up.upload_id,
                            ct,
                        )
                    })
                    .map_err(|e| self.explain(&e))?;
                parts.push(part);
                if filled < buf.len() {
                    break;
                }
            }
            let mut h = self.bucket.extra_headers.clone();
            h.insert(
                http::header::IF_NONE_MATCH,
                http::HeaderValue::from_static("*"),
            );
            let conditional = self
                .bucket
                .with_extra_headers(h)
                .map_err(|e| self.explain_one(&e))?;
            match self.call("complete multipart upload", || {
                conditional.complete_multipart_upload(&full, &up.upload_id, parts.clone())
            }) {
                Ok(_) => Ok(PutOutcome::Created),
                Err(Tried(S3Error::HttpFailWithBody(412, _), _)) => Ok(PutOutcome::AlreadyExists),
                Err(e) => Err(self.explain(&e)),
            }
        })();
        if !matches!(result, Ok(PutOutcome::Created)) {
            let _ = self.bucket.abort_upload(&full, &up.upload_id);
        }
        result
    }

    /// One conditional PUT (`If-None-Match: *`) whose body streams from the file, so no copy
    /// of the object is held in memory (rust-s3's PUT takes the body as a slice and copies
    /// it once more per attempt). The request is a presigned URL of rust-s3 (SigV4 in the
    /// query, the payload unsigned) sent with attohttpc, rust-s3's own HTTP client. The
    /// server answers 412 when the key exists.
    fn put_file_streamed(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let full = self.full(key);
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::IF_NONE_MATCH,
            http::HeaderValue::from_static("*"),
        );
        let read_timeout = self
            .bucket
            .request_timeout()
            .unwrap_or(std::time::Duration::from_secs(60));
        let put = || -> std::result::Result<(), S3Error> {
            let url = self
                .bucket
                .presign_put(&full, 3600, Some(h.clone()), None)?;
            let file = std::fs::File::open(path)?;
            let sent = attohttpc::put(url)
                .header(http::header::IF_NONE_MATCH, "*")
                .connect_timeout(std::time::Duration::from_secs(10))
                .read_timeout(read_timeout)
                .file(file)
                .send();
            let resp = match sent {
                Ok(r) => r,
                // A server may answer 412 as soon as it has the headers and close the
                // connection while the body is still being sent: the key exists if a HEAD
                // finds it (a PUT lands whole or not at all). Otherwise the error stands,
                // and is retried as a dropped connection.
                Err(e) if is_closed_early(&e) => {
                    if let Ok((_, 200)) = self.bucket.head_object(&full) {
                        return Err(S3Error::HttpFailWithBody(412, "the key exists".into()));
                    }
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            };
            let status = resp.status().as_u16();
            if resp.is_success() {
                return Ok(());
            }
            let body = resp.text().unwrap_or_default();
            Err(S3Error::HttpFailWithBody(status, body))
        };
        match self.call("PUT", put) {
            Ok(()) => Ok(PutOutcome::Created),
            Err(Tried(S3Error::HttpFailWithBody(412, _), _)) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.explain(&e)).with_context(|| format!("uploading {}", self.url(key))),
        }
    }

    fn exists(&self, key: &str) -> Result<bool> {
        match self.call("HEAD", || self.bucket.head_object(self.full(key))) {
            Ok((_, 200)) => Ok(true),
            Ok((_, 404)) => Ok(false),
            Ok((_, code)) => bail!("HEAD {} answered HTTP {code}", self.url(key)),
            Err(Tried(S3Error::HttpFailWithBody(404, body), _))
                if !body.contains("NoSuchBucket") =>
            {
                Ok(false)
            }
            Err(e) => Err(self.explain(&e))
                .with_context(|| format!("checking whether {} exists", self.url(key))),
        }
    }
}

/// Whether the server closed the connection while a request body was being sent.
fn is_closed_early(e: &attohttpc::Error) -> bool {
    matches!(e.kind(), attohttpc::ErrorKind::Io(io) if matches!(
        io.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    ))
}

fn short(e: &dyn std::fmt::Display) -> String {
    let s = e.to_string();
    s.lines().next().unwrap_or("").chars().take(200).collect()
}

fn xml_tag(body: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let i = body.find(&open)? + open.len();
    let j = body[i..].find(&close)? + i;
    Some(body[i..j].to_string())
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.url("").trim_end_matches('/').to_string()
    }

    fn credential_source(&self) -> Option<String> {
        Some(self.source.clone())
    }

    fn check(&self) -> Result<()> {
        // Bucket::exists() fails on servers whose bucket list lacks <Owner>; a one-key list
        // checks the bucket and the credentials instead. It lists the catalog's small folder
        // with a delimiter: a server that walks the bucket to answer (s3s-fs walks all of it
        // for a listing without one) then walks only that folder.
        let probe = self.full(crate::archive::layout::CATALOG);
        self.call("LIST", || {
            self.bucket
                .list_page(probe.clone(), Some("/".to_string()), None, None, Some(1))
        })
        .map(|_| ())
        .map_err(|e| self.explain(&e))
        .with_context(|| format!("archive {}", self.describe()))
    }

    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        let size = std::fs::metadata(path)?.len();
        if size <= SINGLE_PUT_MAX {
            return self.put_file_streamed(key, path);
        }
        // A HEAD first saves uploading a large object that exists; the conditional
        // completion is what guarantees nothing is replaced.
        if self.exists(key)? {
            return Ok(PutOutcome::AlreadyExists);
        }
        self.put_multipart_if_absent(key, path)
            .with_context(|| format!("uploading {}", self.url(key)))
    }

    /// One conditional PUT (`If-None-Match: *`): the server answers 412 when the key exists.
    fn put_bytes_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        let mut h = http::HeaderMap::new();
        h.insert("if-none-match", http::HeaderValue::from_static("*"));
        // A retried PUT whose first attempt did land answers 412: the same object, kept.
        match self.call("PUT", || {
            self.bucket
                .put_object_with_headers(self.full(key), data, Some(h.clone()))
        }) {
            Ok(r) if r.status_code() == 200 => Ok(PutOutcome::Created),
            Ok(r) => bail!("uploading {}: HTTP {}", self.url(key), r.status_code()),
            Err(Tried(S3Error::HttpFailWithBody(412, _), _)) => Ok(PutOutcome::AlreadyExists),
            Err(e) => Err(self.explain(&e)).with_context(|| format!("uploading {}", self.url(key))),
        }
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        self.call("PUT", || self.bucket.put_object(self.full(key), data))
            .map(|_| ())
            .map_err(|e| self.explain(&e))
            .with_context(|| format!("storing {}", self.url(key)))
    }

    fn get_into(&self, key: &str, w: &mut (dyn Write + Send)) -> Result<u64> {
        let mut counting = Tally::counting(w);
        // Retried only while nothing was written: a partial download cannot be taken back.
        let wrote = std::cell::Cell::new(0u64);
        let label = format!("S3 GET at {}", self.endpoint);
        let r = retry(
            &self.retry,
            &label,
            |e: &S3Error| wrote.get() == 0 && transient(e),
            || {
                let r = self
                    .bucket
                    .get_object_to_writer(self.full(key), &mut counting);
                wrote.set(counting.bytes);
                r
            },
        )
        .map_err(|g| Tried(g.error, g.attempts));
        match r {
            Ok(200) => Ok(counting.bytes),
            Ok(404) => Err(StoreError::NotFound(self.url(key)).into()),
            Ok(code) => bail!("downloading {}: HTTP {code}", self.url(key)),
            Err(Tried(S3Error::HttpFailWithBody(404, body), _))
                if !body.contains("NoSuchBucket") =>
            {
                Err(StoreError::NotFound(self.url(key)).into())
            }
            // The writer's side stopped first (a streamed download whose reader is done): kept
            // an io error, which the stream's callers tell from a failed download.
            Err(Tried(S3Error::Io(io), _)) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::new(io))
                    .with_context(|| format!("downloading {}", self.url(key)))
            }
            Err(e) => {
                Err(self.explain(&e)).with_context(|| format!("downloading {}", self.url(key)))
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_with(prefix, None)
    }

    fn list_folder(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        self.list_with(prefix, Some("/"))
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let full = self.full(prefix);
        let pages = self
            .call("LIST", || {
                self.bucket.list(full.clone(), Some("/".to_string()))
            })
            .map_err(|e| self.explain(&e))
            .with_context(|| format!("listing {}", self.url(prefix)))?;
        let mut out: Vec<String> = pages
            .into_iter()
            .flat_map(|p| p.common_prefixes.unwrap_or_default())
            .filter_map(|c| {
                c.prefix
                    .strip_prefix(&full)
                    .map(|d| d.trim_end_matches('/').to_string())
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        match self.call("DELETE", || self.bucket.delete_object(self.full(key))) {
            Ok(_) => Ok(()),
            Err(Tried(S3Error::HttpFailWithBody(404, _), _)) => Ok(()),
            Err(e) => Err(self.explain(&e)).with_context(|| format!("deleting {}", self.url(key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    /// A fake S3 endpoint that accepts a multipart upload and answers its completion with
    /// HTTP 200 and an `<Error>` body (as S3 may). Returns its port and the requests seen.
    fn fake_s3() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut w = conn;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let (mut len, mut conditional) = (0usize, false);
                    loop {
                        let mut h = String::new();
                        r.read_line(&mut h).unwrap();
                        let lower = h.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        conditional |= lower.starts_with("if-none-match: *");
                        if h == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let req = line.trim().to_string();
                    log.lock().unwrap().push(format!(
                        "{req}{}",
                        if conditional { " [if-none-match]" } else { "" }
                    ));
                    let (status, extra, body) = if req.starts_with("POST")
                        && req.contains("uploads")
                    {
                        ("200 OK", "", "<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>u1</UploadId></InitiateMultipartUploadResult>".to_string())
                    } else if req.starts_with("PUT") {
                        ("200 OK", "ETag: \"e1\"\r\n", String::new())
                    } else if req.starts_with("POST") {
                        ("200 OK", "", "<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>We encountered an internal error</Message></Error>".to_string())
                    } else if req.starts_with("HEAD") {
                        ("404 Not Found", "", String::new())
                    } else {
                        ("204 No Content", "", String::new())
                    };
                    let _ = write!(
                        w,
                        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
            }
        });
        (port, seen)
    }

    #[test]
    fn a_completion_answered_200_with_an_error_body_is_a_failure() {
        let (port, seen) = fake_s3();
        let loc = ArchiveLocation::S3 {
            bucket: "b".into(),
            prefix: String::new(),
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            region: "us-east-1".into(),
            path_style: true,
            access_key_id: Some("id".into()),
            secret_access_key: Some(Secret::new("secret")),
            session_token: None,
            chain: AwsChain::default(),
        };
        let store = S3Store::new(&loc).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), vec![7u8; (SINGLE_PUT_MAX + 1) as usize]).unwrap();
        let err = store.put_file_if_absent("k", f.path()).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("InternalError"), "{msg}");
        let seen = seen.lock().unwrap().clone();
        let complete = seen
            .iter()
            .find(|r| r.starts_with("POST") && r.contains("uploadId"))
            .expect("a completion was sent");
        assert!(complete.ends_with("[if-none-match]"), "{seen:?}");
        assert!(
            seen.iter().any(|r| r.starts_with("DELETE")),
            "the failed upload was not aborted: {seen:?}"
        );
    }
}
