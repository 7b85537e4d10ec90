//! PostgreSQL connection strings (URLs and libpq key=value strings): the TLS parameters taken
//! out of them, and passwords hidden from every message.

use anyhow::{anyhow, Result};

/// Takes libpq's `sslmode` and `sslrootcert` out of a warehouse URL or key=value string (the
/// postgres crate knows only some sslmodes and no sslrootcert); returns the rest and both.
pub fn split_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>)> {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let mut u = url::Url::parse(url).map_err(|_| {
            anyhow!(
                "warehouse.url {} is not a valid PostgreSQL URL",
                redact_url(url)
            )
        })?;
        let mut keep = Vec::new();
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "sslmode" => mode = Some(v.into_owned()),
                "sslrootcert" => root = Some(v.into_owned()),
                _ => keep.push((k.into_owned(), v.into_owned())),
            }
        }
        if keep.is_empty() {
            u.set_query(None);
        } else {
            u.query_pairs_mut().clear().extend_pairs(keep);
        }
        return Ok((u.to_string(), mode, root));
    }
    let mut keep = Vec::new();
    for part in url.split_whitespace() {
        match part.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.to_string()),
            Some(("sslrootcert", v)) => root = Some(v.to_string()),
            _ => keep.push(part),
        }
    }
    Ok((keep.join(" "), mode, root))
}

/// A URL with any password replaced by `***`, for messages.
/// Every form: `user:pass@` in a URL, `?password=` in its query, and `password=` in a libpq
/// key=value string.
pub fn redact_url(u: &str) -> String {
    if !u.contains("://") {
        return u
            .split_whitespace()
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let Ok(mut p) = url::Url::parse(u) else {
        return "<unparsable url>".to_string();
    };
    if p.password().is_some() {
        let _ = p.set_password(Some("***"));
    }
    if p.query_pairs().any(|(k, _)| is_secret_param(&k)) {
        let pairs: Vec<(String, String)> = p
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_param(&k) {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        p.query_pairs_mut().clear().extend_pairs(pairs);
    }
    p.to_string()
}

fn is_secret_param(k: &str) -> bool {
    k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword")
}

/// Whether a warehouse URL (or key=value string) holds a password in any form.
pub fn url_has_password(u: &str) -> bool {
    redact_url(u) != u || u.contains("<unparsable")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password() {
        let r = redact_url("postgresql://u:hunter2@h:5432/db");
        assert!(!r.contains("hunter2"));
        assert!(r.contains("***"));
    }

    #[test]
    fn redact_hides_every_form_of_password() {
        for u in [
            "postgresql://u@h:5432/db?password=hunter2&sslmode=require",
            "postgresql://u:hunter2@h/db?application_name=x",
            "host=h user=u password=hunter2 dbname=db",
        ] {
            let r = redact_url(u);
            assert!(!r.contains("hunter2") && r.contains("***"), "{r}");
            assert!(url_has_password(u), "{u}");
        }
        let plain = "postgresql://u@h:5432/db?sslmode=require";
        assert_eq!(redact_url(plain), plain);
        assert!(!url_has_password(plain));
        assert!(redact_url("postgresql://u@h/db?sslmode=require&password=x")
            .contains("sslmode=require"));
    }
}
