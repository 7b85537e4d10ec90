//! Amazon MSK IAM authentication: SASL/OAUTHBEARER tokens that are SigV4-presigned URLs.
//!
//! The token, as AWS's signer libraries build it (aws-msk-iam-sasl-signer-go,
//! `signer/msk_auth_token_provider.go`; aws-msk-iam-sasl-signer-python,
//! `aws_msk_iam_sasl_signer/MSKAuthTokenProvider.py`):
//! - a GET of `https://kafka.<region>.amazonaws.com/?Action=kafka-cluster%3AConnect`, presigned
//!   with SigV4 query parameters for the service `kafka-cluster` in that region, valid for
//!   `X-Amz-Expires` = 900 s, the only signed header `host`, the payload hash that of the
//!   empty body (the Go signer passes `sha256("")`), and `X-Amz-Security-Token` among the
//!   signed parameters when the credentials are temporary;
//! - then a `User-Agent` parameter added after signing (not signed);
//! - the whole URL base64url-encoded without padding (Go's `base64.RawURLEncoding`);
//! - the token's lifetime: X-Amz-Date plus X-Amz-Expires, in milliseconds.
//!
//! The host is the regional `kafka.<region>.amazonaws.com`, not a broker's: librdkafka asks
//! for one token for the whole client, and the signers sign that fixed host.
//!
//! SigV4 itself (canonical request, string to sign, signing key) follows
//! <https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html>
//! and, for the query-string form, <https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html>.

use crate::config::MskIamSettings;
use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use s3::creds::Credentials;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How long a token is valid (the signers' DefaultExpirySeconds).
pub const TOKEN_EXPIRES_SECS: u64 = 900;
const SERVICE: &str = "kafka-cluster";
const ACTION: &str = "kafka-cluster:Connect";
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const USER_AGENT: &str = concat!("batchlayer/", env!("CARGO_PKG_VERSION"));

/// The keys a request is signed with.
pub struct Keys<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// Temporary credentials' session token: sent (and signed) as X-Amz-Security-Token.
    pub session_token: Option<&'a str>,
}

/// A request to presign: GET of `https://host{path}?{params}`.
pub struct Request<'a> {
    pub host: &'a str,
    pub path: &'a str,
    /// The request's own query parameters (the X-Amz-* ones are added by `presign`).
    pub params: &'a [(&'a str, &'a str)],
    pub service: &'a str,
    pub region: &'a str,
    pub expires_secs: u64,
    /// Hex SHA-256 of the payload, or `UNSIGNED-PAYLOAD` (S3).
    pub payload_hash: &'a str,
}

/// A presigned request, with its intermediate strings for inspection.
#[derive(Debug)]
pub struct Presigned {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
    /// The canonical query string followed by `&X-Amz-Signature=...`.
    pub query: String,
}

/// SigV4's UriEncode: every byte but the unreserved `A-Z a-z 0-9 - _ . ~` as `%XX` (upper
/// case hex), `/` included (query names and values).
fn uri_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac_sha256(key: &[u8], data: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data.as_bytes());
    m.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Presigns a GET with SigV4 query parameters at `now`.
pub fn presign(r: &Request<'_>, k: &Keys<'_>, now: DateTime<Utc>) -> Presigned {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let scope = format!("{date}/{}/{}/aws4_request", r.region, r.service);
    let credential = format!("{}/{scope}", k.access_key_id);
    let expires = r.expires_secs.to_string();
    let mut params: Vec<(String, String)> = r
        .params
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    params.extend([
        ("X-Amz-Algorithm".into(), ALGORITHM.into()),
        ("X-Amz-Credential".into(), credential),
        ("X-Amz-Date".into(), amz_date.clone()),
        ("X-Amz-Expires".into(), expires),
        ("X-Amz-SignedHeaders".into(), "host".into()),
    ]);
    if let Some(t) = k.session_token {
        params.push(("X-Amz-Security-Token".into(), t.to_string()));
    }
    // Sorted by encoded name (then value), each name and value URI-encoded.
    let mut encoded: Vec<(String, String)> = params
        .iter()
        .map(|(n, v)| (uri_encode(n), uri_encode(v)))
        .collect();
    encoded.sort();
    let canonical_query = encoded
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "GET\n{}\n{canonical_query}\nhost:{}\n\nhost\n{}",
        r.path, r.host, r.payload_hash
    );
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{}", k.secret_access_key).as_bytes(), &date);
    let k_region = hmac_sha256(&k_date, r.region);
    let k_service = hmac_sha256(&k_region, r.service);
    let k_signing = hmac_sha256(&k_service, "aws4_request");
    let signature = hex::encode(hmac_sha256(&k_signing, &string_to_sign));
    let query = format!("{canonical_query}&X-Amz-Signature={signature}");
    Presigned {
        canonical_request,
        string_to_sign,
        signature,
        query,
    }
}

/// An MSK IAM token and when it expires (milliseconds since the epoch).
pub struct Token {
    pub value: String,
    pub expires_at_ms: i64,
}

/// Builds the token for `region` at `now`, valid for `expires_secs`.
pub fn auth_token(region: &str, k: &Keys<'_>, now: DateTime<Utc>, expires_secs: u64) -> Token {
    let host = format!("kafka.{region}.amazonaws.com");
    let signed = presign(
        &Request {
            host: &host,
            path: "/",
            params: &[("Action", ACTION)],
            service: SERVICE,
            region,
            expires_secs,
            payload_hash: &sha256_hex(b""),
        },
        k,
        now,
    );
    let url = format!(
        "https://{host}/?{}&User-Agent={}",
        signed.query,
        uri_encode(USER_AGENT)
    );
    Token {
        value: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url.as_bytes()),
        // X-Amz-Date has whole seconds: the token expires that many seconds after them.
        expires_at_ms: (now.timestamp() + expires_secs as i64) * 1000,
    }
}

/// Signs tokens for one Kafka client with the credentials the archive's chain finds: found
/// at the first token, refreshed from their source once expired. A token never outlives
/// the credentials it was signed with, so librdkafka (which asks again at 80% of a token's
/// lifetime) refreshes before either expires.
pub struct MskTokens {
    settings: MskIamSettings,
    expires_secs: u64,
    creds: Mutex<Option<Credentials>>,
    issued: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl MskTokens {
    pub fn new(settings: &MskIamSettings) -> Self {
        Self::with_expiry(settings, TOKEN_EXPIRES_SECS)
    }

    /// Tokens valid for `expires_secs` (tests use a few seconds to see refreshes).
    pub fn with_expiry(settings: &MskIamSettings, expires_secs: u64) -> Self {
        MskTokens {
            settings: settings.clone(),
            expires_secs,
            creds: Mutex::new(None),
            issued: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// How many tokens were handed out.
    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Why the last token could not be made, if it could not.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    /// A fresh token, signed now.
    pub fn token(&self) -> Result<Token> {
        let r = self.sign(Utc::now());
        match &r {
            Ok(_) => {
                self.issued.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap() = None;
            }
            Err(e) => *self.last_error.lock().unwrap() = Some(format!("{e:#}")),
        }
        r
    }

    fn sign(&self, now: DateTime<Utc>) -> Result<Token> {
        let mut slot = self.creds.lock().unwrap();
        match slot.as_mut() {
            Some(c) => c
                .refresh()
                .map_err(|e| anyhow!("MSK IAM: refreshing AWS credentials: {e}"))?,
            None => {
                let s = &self.settings;
                let (c, _source) = crate::archive::s3::credentials(
                    &s.access_key_id,
                    &s.secret_access_key,
                    &s.session_token,
                    &s.chain,
                )?;
                *slot = Some(c);
            }
        }
        let c = slot.as_ref().expect("just filled");
        let (Some(id), Some(secret)) = (c.access_key.as_deref(), c.secret_key.as_deref()) else {
            bail!("MSK IAM needs AWS credentials and none were found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile, web identity, container or instance credentials)");
        };
        let keys = Keys {
            access_key_id: id,
            secret_access_key: secret,
            session_token: c.security_token.as_deref().or(c.session_token.as_deref()),
        };
        let mut t = auth_token(&self.settings.region, &keys, now, self.expires_secs);
        if let Some(exp) = &c.expiration {
            let creds_ms = (exp.0.unix_timestamp_nanos() / 1_000_000) as i64;
            t.expires_at_ms = t.expires_at_ms.min(creds_ms);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::HashMap;

    /// AWS's published presigned-URL example: GET of examplebucket's test.txt with the
    /// documentation keys at 2013-05-24T00:00:00Z for 86400 s, signing only `host`, payload
    /// UNSIGNED-PAYLOAD. The page gives the hash of the canonical request (in the string to
    /// sign) and the signature:
    /// https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-query-string-auth.html
    /// (section "An Example").
    #[test]
    fn presigning_gives_aws_documented_example() {
        let now = Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).unwrap();
        let keys = Keys {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            session_token: None,
        };
        let p = presign(
            &Request {
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                params: &[],
                service: "s3",
                region: "us-east-1",
                expires_secs: 86400,
                payload_hash: "UNSIGNED-PAYLOAD",
            },
            &keys,
            now,
        );
        assert_eq!(
            p.canonical_request,
            "GET\n/test.txt\n\
             X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\n\
             host:examplebucket.s3.amazonaws.com\n\nhost\nUNSIGNED-PAYLOAD"
        );
        assert_eq!(
            p.string_to_sign,
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n\
             3bfa292879f6447bbcda7001decf97f4a54dc650c8942174ae0a9121cf58ad04"
        );
        assert_eq!(
            p.signature,
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        );
        assert!(p.query.ends_with(
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
        ));
    }

    /// RFC 4231 test case 2 (HMAC-SHA-256, key "Jefe").
    #[test]
    fn hmac_is_rfc_4231() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    fn decode(token: &str) -> (String, HashMap<String, String>) {
        assert!(
            !token.contains('=') && !token.contains('+') && !token.contains('/'),
            "base64url without padding: {token}"
        );
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .unwrap();
        let url = url::Url::parse(std::str::from_utf8(&bytes).unwrap()).unwrap();
        let params = url.query_pairs().into_owned().collect();
        (url[..url::Position::AfterPath].to_string(), params)
    }

    /// The token's structure as the signers' own tests check it
    /// (aws-msk-iam-sasl-signer-python `tests/test_auth_token_provider.py`,
    /// `assertTokenIsAsExpected`).
    #[test]
    fn the_token_is_the_documented_presigned_url() {
        let now = Utc.with_ymd_and_hms(2024, 2, 29, 23, 59, 58).unwrap();
        let keys = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: Some("FwoGZXIvYXdzE/token+with=odd&chars"),
        };
        let t = auth_token("eu-west-1", &keys, now, TOKEN_EXPIRES_SECS);
        let (base, q) = decode(&t.value);
        assert_eq!(base, "https://kafka.eu-west-1.amazonaws.com/");
        assert_eq!(q["Action"], "kafka-cluster:Connect");
        assert_eq!(q["X-Amz-Algorithm"], "AWS4-HMAC-SHA256");
        assert_eq!(
            q["X-Amz-Credential"],
            "AKIDEXAMPLE/20240229/eu-west-1/kafka-cluster/aws4_request"
        );
        assert_eq!(q["X-Amz-Date"], "20240229T235958Z");
        assert_eq!(q["X-Amz-Expires"], "900");
        assert_eq!(q["X-Amz-SignedHeaders"], "host");
        assert_eq!(
            q["X-Amz-Security-Token"],
            "FwoGZXIvYXdzE/token+with=odd&chars"
        );
        assert!(q["User-Agent"].starts_with("batchlayer/"), "{q:?}");
        let sig = &q["X-Amz-Signature"];
        assert!(
            sig.len() == 64 && sig.bytes().all(|b| b.is_ascii_hexdigit()),
            "{sig}"
        );
        assert_eq!(q.len(), 9, "{q:?}");
        // Expiry: X-Amz-Date + X-Amz-Expires, in milliseconds.
        assert_eq!(t.expires_at_ms, (now.timestamp() + 900) * 1000);

        // The session token is signed: the signature is the one SigV4 gives over the
        // parameters as decoded, the empty payload's hash and the regional host.
        let again = presign(
            &Request {
                host: "kafka.eu-west-1.amazonaws.com",
                path: "/",
                params: &[("Action", "kafka-cluster:Connect")],
                service: "kafka-cluster",
                region: "eu-west-1",
                expires_secs: 900,
                payload_hash: "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            },
            &keys,
            now,
        );
        assert_eq!(&again.signature, sig);
        assert!(again
            .canonical_request
            .contains("&X-Amz-Security-Token=FwoGZXIvYXdzE%2Ftoken%2Bwith%3Dodd%26chars&"));
        let other = Keys {
            session_token: Some("another"),
            ..keys
        };
        let (_, q2) = decode(&auth_token("eu-west-1", &other, now, 900).value);
        assert_ne!(q2["X-Amz-Signature"], *sig);

        // Long-term keys: no security token at all.
        let plain = Keys {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "secret",
            session_token: None,
        };
        let (_, q) = decode(&auth_token("us-east-1", &plain, now, 900).value);
        assert!(!q.contains_key("X-Amz-Security-Token"), "{q:?}");
        assert_eq!(q.len(), 8);
    }

    #[test]
    fn uri_encoding_keeps_only_unreserved_characters() {
        assert_eq!(uri_encode("aZ09-_.~"), "aZ09-_.~");
        assert_eq!(uri_encode("a/b:c d+é"), "a%2Fb%3Ac%20d%2B%C3%A9");
    }
}
