//! Connecting as to managed services, on 127.0.0.1 with certificates the test generates:
//! PostgreSQL with ssl = on (every sslmode; a wrong CA and a wrong host fail clearly), Kafka
//! over TLS (socat terminating TLS in front of a private tansu), https S3 (socat in front of
//! s3s-fs), and the AWS credential sources that can be reached here.

use crate::common::*;
use crate::failures::{free_port, wait_port, Server};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A CA, a second unrelated CA, and a server certificate signed by the first. The server
/// certificate names `localhost` and, when `with_ip`, 127.0.0.1. The files live as long as
/// `dir`.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl (Debian package openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn certs(with_ip: bool) -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for ca in ["ca", "other"] {
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-subj",
                &format!("/CN=batchlayer test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
    }
    let san = if with_ip {
        "subjectAltName=DNS:localhost,IP:127.0.0.1"
    } else {
        "subjectAltName=DNS:localhost"
    };
    std::fs::write(
        d.join("ext.cnf"),
        format!("{san}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
    )
    .unwrap();
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "ext.cnf",
        ],
    );
    Certs {
        ca: d.join("ca.pem"),
        other_ca: d.join("other.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        _dir: dir,
    }
}

/// socat terminating TLS on `port` and forwarding plain TCP to `target`.
fn tls_terminator(c: &Certs, port: u16, target: u16) -> Server {
    let listen = format!(
        "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},verify=0",
        c.cert.display(),
        c.key.display()
    );
    let child = Command::new("socat")
        .args([&listen, &format!("TCP:127.0.0.1:{target}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat (Debian package socat; tests/stack.sh installs it)");
    let s = Server(child);
    wait_port(port, "socat");
    s
}

/// A private PostgreSQL cluster with ssl = on, run as the postgres user, removed when dropped.
struct TlsPostgres {
    port: u16,
    data: PathBuf,
    bin: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsPostgres {
    fn start(c: &Certs) -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql")
            .map(|e| e.unwrap().path().join("bin"))
            .filter(|p| p.join("initdb").is_file())
            .max()
            .expect("initdb");
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let as_pg = |args: &[&str]| {
            let out = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        assert!(Command::new("chown")
            .args(["postgres", &path_str(dir.path())])
            .status()
            .unwrap()
            .success());
        as_pg(&[
            &path_str(&bin.join("initdb")),
            "-D",
            &path_str(&data),
            "--auth=trust",
            "-U",
            "postgres",
        ]);
        // One role logs in with a SCRAM password over TLS only (channel binding is tested on it).
        let hba = data.join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(
            &hba,
            format!("hostssl all bl_scram 127.0.0.1/32 scram-sha-256\n{rest}"),
        )
        .unwrap();
        for (from, to) in [(&c.cert, "server.crt"), (&c.key, "server.key")] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        assert!(Command::new("chown")
            .args([
                "postgres",
                &path_str(&data.join("server.crt")),
                &path_str(&data.join("server.key"))
            ])
            .status()
            .unwrap()
            .success());
        std::fs::set_permissions(
            data.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let port = free_port();
        let opts = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c ssl=on -c unix_socket_directories={}",
            path_str(dir.path())
        );
        as_pg(&[
            &path_str(&bin.join("pg_ctl")),
            "-D",
            &path_str(&data),
            "-l",
            &path_str(&dir.path().join("log")),
            "-w",
            "-o",
            &opts,
            "start",
        ]);
        TlsPostgres {
            port,
            data,
            bin,
            _dir: dir,
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgresql://postgres@{host}:{}/postgres{query}", self.port)
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &path_str(&self.data), "-m", "immediate", "stop"])
            .output();
    }
}

/// Connects through batchlayer's own client with this URL; Ok(whether the session is TLS).
fn session_ssl(url: &str) -> Result<bool, String> {
    session_ssl_with(url, &[])
}

/// [`session_ssl`] with these environment variables (PGPASSWORD).
fn session_ssl_with(url: &str, vars: &[(&str, &str)]) -> Result<bool, String> {
    let text = format!("[warehouse]\nurl = \"{url}\"\n");
    let file = batchlayer::config::parse_file(&text).unwrap();
    let env: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let s = batchlayer::config::resolve(file, &env, &Default::default())
        .map_err(|e| format!("{e:#}"))?;
    let (mut client, _) =
        batchlayer::warehouse::session::open_client(&s.warehouse).map_err(|e| format!("{e:#}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    Ok(row.get(0))
}

#[test]
fn postgres_over_tls_in_every_sslmode() {
    if !stack_up() {
        return;
    }
    let c = certs(false);
    let pg = TlsPostgres::start(&c);
    let ca = path_str(&c.ca);
    let other = path_str(&c.other_ca);
    let q = |mode: &str, root: &str| {
        if root.is_empty() {
            format!("?sslmode={mode}")
        } else {
            format!("?sslmode={mode}&sslrootcert={root}")
        }
    };
    // disable: plain; prefer and require: TLS without checking the certificate.
    assert_eq!(
        session_ssl(&pg.url("127.0.0.1", &q("disable", ""))),
        Ok(false)
    );
    assert_eq!(
        session_ssl(&pg.url("127.0.0.1", &q("prefer", ""))),
        Ok(true)
    );
    assert_eq!(
        session_ssl(&pg.url("127.0.0.1", &q("require", ""))),
        Ok(true)
    );
    // verify-ca checks the chain only; verify-full also the host name (the cert names localhost).
    assert_eq!(
        session_ssl(&pg.url("127.0.0.1", &q("verify-ca", &ca))),
        Ok(true)
    );
    assert_eq!(
        session_ssl(&pg.url("localhost", &q("verify-full", &ca))),
        Ok(true)
    );
    let err = session_ssl(&pg.url("127.0.0.1", &q("verify-full", &ca))).unwrap_err();
    assert!(
        err.contains("cannot connect to PostgreSQL") && err.contains("verify-full"),
        "{err}"
    );
    assert!(err.contains("certificate verify failed"), "{err}");
    // A CA that did not sign the server's certificate.
    let err = session_ssl(&pg.url("localhost", &q("verify-ca", &other))).unwrap_err();
    assert!(err.contains("certificate verify failed"), "{err}");
    // SCRAM with channel binding required: the client must bind the session to the server's
    // certificate (tls-server-end-point) in every TLS mode, or the server refuses the login.
    let mut admin = postgres::Client::connect(&pg.url("127.0.0.1", ""), postgres::NoTls).unwrap();
    admin
        .batch_execute("CREATE ROLE bl_scram LOGIN PASSWORD 'scram-pw-9'")
        .unwrap();
    let scram = |mode: &str, host: &str, root: &str, pw: &str| {
        let url = format!(
            "postgresql://bl_scram@{host}:{}/postgres{}&channel_binding=require",
            pg.port,
            q(mode, root)
        );
        session_ssl_with(&url, &[("PGPASSWORD", pw)])
    };
    assert_eq!(scram("require", "127.0.0.1", "", "scram-pw-9"), Ok(true));
    assert_eq!(
        scram("verify-full", "localhost", &ca, "scram-pw-9"),
        Ok(true)
    );
    let err = scram("require", "127.0.0.1", "", "wrong-pw-7").unwrap_err();
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(
        !err.contains("wrong-pw-7"),
        "the password must not be shown: {err}"
    );
    // The shared stack's server: prefer gives TLS exactly when the server offers it (Debian
    // turns ssl on with a snakeoil certificate), and falls back to plain when it does not.
    let row = crate::common::pg().query_one("SHOW ssl", &[]).unwrap();
    let shared_has_tls = row.get::<_, String>(0) == "on";
    assert_eq!(
        session_ssl(&format!("{}?sslmode=prefer", pg_url())),
        Ok(shared_has_tls)
    );
    let require = session_ssl(&format!("{}?sslmode=require", pg_url()));
    if shared_has_tls {
        assert_eq!(require, Ok(true));
    } else {
        assert!(require.unwrap_err().contains("TLS"));
    }

    // Through the binary: config keys instead of URL parameters, and one clear line on failure.
    let w = World::local("pgtls");
    let good = format!(
        "[kafka]\ntopic = \"t\"\n[archive]\nurl = \"{}\"\n[warehouse]\nurl = \"{}\"\nsslmode = \"verify-full\"\nsslrootcert = \"{ca}\"\n",
        w.archive,
        pg.url("localhost", "")
    );
    let bad = good.replace(&ca, &other);
    for (text, code) in [(good, 0), (bad, 1)] {
        let p = w.dir.path().join("tls.toml");
        std::fs::write(&p, text).unwrap();
        let out = assert_cmd::Command::cargo_bin("batchlayer")
            .unwrap()
            .env_clear()
            .env("CI", "true")
            .args(["--config", &path_str(&p), "copy", "--dry-run"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        if code == 1 {
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(err.contains("certificate verify failed"), "{err}");
        }
    }
}

#[test]
fn kafka_over_tls_through_a_tls_terminator() {
    if !stack_up() {
        return;
    }
    let c = certs(true);
    // tansu listens in plain on `inner` and advertises `outer`, where socat speaks TLS.
    let (inner, outer) = (free_port(), free_port());
    let listen = format!("tcp://127.0.0.1:{inner}");
    let advertised = format!("tcp://127.0.0.1:{outer}");
    let _tansu = Server::start(
        "tansu",
        &[
            "broker",
            "--listener-url",
            &listen,
            "--advertised-listener-url",
            &advertised,
            "--storage-engine",
            "memory://tansu/",
        ],
        inner,
    );
    let _tls = tls_terminator(&c, outer, inner);
    let mut w = World::local("ktls");
    w.kafka_toml = format!(
        "security_protocol = \"ssl\"\nssl_ca_location = \"{}\"\n",
        path_str(&c.ca)
    );
    let brokers = format!("127.0.0.1:{outer}");
    // The producer and the consumer both speak TLS only (the advertised port is socat's).
    w.run_ok(&[
        "produce-tweets",
        "--brokers",
        &brokers,
        "--count",
        "500",
        "--partitions",
        "2",
    ]);
    let v = w.json(&["ingest", "--brokers", &brokers]);
    assert_eq!(v["messages"], 500, "{v}");
    let v = w.json(&["copy"]);
    assert_eq!(v["rows"], 500, "{v}");

    // The wrong CA: the handshake fails, one line, nothing archived.
    let mut bad = World::local("ktlsbad");
    bad.kafka_toml = format!(
        "security_protocol = \"ssl\"\nssl_ca_location = \"{}\"\nstall_timeout_secs = 5\n",
        path_str(&c.other_ca)
    );
    let (code, _, err) = bad.run(&["ingest", "--brokers", &brokers]);
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(bad.data_objects().is_empty());
}

#[test]
fn librdkafka_is_built_with_scram_and_sasl_ssl() {
    // No local broker speaks SASL (tansu 0.6.0 has none), so this checks what can be checked
    // here: librdkafka accepts SCRAM over SASL_SSL (a build without OpenSSL refuses it with
    // "No provider for SASL mechanism"), and the password never appears in the description.
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let k = batchlayer::config::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            topic: "t".into(),
            group: "g".into(),
            security_protocol: Some("sasl_ssl".into()),
            sasl_mechanism: Some(mech.into()),
            sasl_username: Some("user".into()),
            sasl_password: Some(batchlayer::config::Secret::new("scram-pw-123")),
            ..Default::default()
        };
        let cfg = batchlayer::source::client_config(&k);
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> = cfg.create();
        assert!(consumer.is_ok(), "{mech}: {:?}", consumer.err());
        let shown = batchlayer::source::describe_config(&cfg);
        assert!(shown.contains("sasl.password=***") && !shown.contains("scram-pw-123"));
    }
}

/// The world's config with S3 keys removed from the environment (the chain must find them).
fn keyless(w: &mut World) {
    w.env.remove("AWS_ACCESS_KEY_ID");
    w.env.remove("AWS_SECRET_ACCESS_KEY");
    w.env
        .insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
}

fn source_line(err: &str) -> String {
    err.lines()
        .find(|l| l.contains("S3 credentials:"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn s3_over_https_with_a_custom_ca() {
    if !stack_up() {
        return;
    }
    let c = certs(true);
    let port = free_port();
    let _tls = tls_terminator(&c, port, 9000);
    let mut w = World::s3("s3tls");
    let https = format!("https://127.0.0.1:{port}");
    w.env.insert("BATCHLAYER_S3_ENDPOINT".into(), https.clone());
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(200, 3, 10));
    // Without the CA the certificate is refused, in one line, and nothing is committed.
    let (code, _, err) = w.run(&["ingest"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&https) || err.contains("127.0.0.1"), "{err}");
    w.env.insert("SSL_CERT_FILE".into(), path_str(&c.ca));
    let v = w.json(&["ingest"]);
    assert_eq!(v["messages"], 200, "{v}");
    let v = w.json(&["copy"]);
    assert_eq!(v["rows"], 200, "{v}");
}

/// The schema registry over https (socat in front of the stand-in): its certificate checked
/// against `schema_registry.ca_file`; without that CA, or with another, a clear refusal.
#[test]
fn schema_registry_over_https_with_a_ca_file() {
    use batchlayer::config::RegistrySettings;
    use batchlayer::registry::standin::RegistryStandIn;
    use batchlayer::registry::RegistryClient;
    let c = certs(true);
    let sr = RegistryStandIn::start(&[]);
    let port = free_port();
    let _tls = tls_terminator(&c, port, sr.port);
    let https = format!("https://127.0.0.1:{port}");
    let client = |ca: Option<&Path>| {
        RegistryClient::new(&RegistrySettings {
            url: https.clone(),
            username: None,
            password: None,
            bearer_token: None,
            ca_file: ca.map(Path::to_path_buf),
            retry: Default::default(),
        })
        .unwrap()
    };
    let schema = r#"{"type":"record","name":"Tls","fields":[{"name":"id","type":"long"}]}"#;
    for ca in [None, Some(c.other_ca.as_path())] {
        let err = format!("{:#}", client(ca).register("t-value", schema).unwrap_err());
        assert!(
            err.contains(&format!(
                "schema registry {https}: POST /subjects/t-value/versions"
            )) && err.to_ascii_lowercase().contains("certificate"),
            "{ca:?}: {err}"
        );
        assert!(
            !err.contains("gave up"),
            "a refused certificate is not retried: {err}"
        );
    }
    let trusted = client(Some(&c.ca));
    let id = trusted.register("t-value", schema).unwrap();
    assert!(trusted.schema_by_id(id).unwrap().is_some());
}

#[test]
fn s3_credentials_from_session_token_profile_and_config_files() {
    if !stack_up() {
        return;
    }
    let mut w = World::s3("s3creds");
    produce_raw(&brokers(), &w.topic, 1, &tweet_payloads(50, 4, 10));
    // Keys with a session token (temporary credentials).
    w.env.insert("AWS_SESSION_TOKEN".into(), "token-abc".into());
    let (code, _, err) = w.run(&["-v", "copy", "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(source_line(&err).contains("session token"), "{err}");
    assert!(
        !err.contains("token-abc") && !err.contains(&s3_secret()),
        "{err}"
    );
    w.env.remove("AWS_SESSION_TOKEN");

    // The shared credentials file, default profile.
    keyless(&mut w);
    let creds = w.dir.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3_access(),
            s3_secret()
        ),
    )
    .unwrap();
    w.env
        .insert("AWS_SHARED_CREDENTIALS_FILE".into(), path_str(&creds));
    let (code, _, err) = w.run(&["-v", "ingest"]);
    assert_eq!(code, 0, "{err}");
    assert!(source_line(&err).contains("profile default"), "{err}");
    assert_eq!(w.data_objects().len(), 1);

    // A named profile in the config file.
    w.env.remove("AWS_SHARED_CREDENTIALS_FILE");
    let config = w.dir.path().join("config");
    std::fs::write(
        &config,
        format!(
            "[profile loader]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3_access(),
            s3_secret()
        ),
    )
    .unwrap();
    w.env.insert("AWS_CONFIG_FILE".into(), path_str(&config));
    w.env.insert("AWS_PROFILE".into(), "loader".into());
    let (code, _, err) = w.run(&["-v", "copy"]);
    assert_eq!(code, 0, "{err}");
    assert!(source_line(&err).contains("profile loader"), "{err}");
    assert_eq!(w.count("batch_raw"), 50);

    // A profile that does not exist is a configuration error, not anonymous access.
    w.env.insert("AWS_PROFILE".into(), "nobody".into());
    let (code, _, err) = w.run(&["copy"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("nobody"), "{err}");
}

/// A stand-in for the ECS/EKS container-credentials endpoint: answers every request with the
/// test server's keys and an expiry `ttl` seconds ahead; counts requests.
fn container_endpoint(ttl: i64) -> (u16, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { break };
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            h.fetch_add(1, Ordering::SeqCst);
            let exp = chrono::Utc::now() + chrono::Duration::seconds(ttl);
            let body = serde_json::json!({
                "AccessKeyId": s3_access(),
                "SecretAccessKey": s3_secret(),
                "Token": "container-token",
                "Expiration": exp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
            .to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

#[test]
fn s3_credentials_from_a_container_endpoint_are_refreshed_when_they_expire() {
    if !stack_up() {
        return;
    }
    // Credentials that are expired as soon as they are issued: each request must refresh.
    let (port, hits) = container_endpoint(0);
    let mut w = World::s3("s3ecs");
    keyless(&mut w);
    w.env.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
        format!("http://127.0.0.1:{port}/creds"),
    );
    w.env.insert("NO_PROXY".into(), "127.0.0.1".into());
    // Several objects, each stored by a request made after the first credentials expired.
    w.extra_toml = "max_object_records = 10".into();
    let payloads = tweet_payloads(40, 5, 10);
    produce_raw(&brokers(), &w.topic, 1, &payloads);
    // (The test process itself has no container endpoint: it checks through the binary.)
    let (code, out, err) = w.run(&["-v", "--json", "ingest"]);
    assert_eq!(code, 0, "{err}");
    assert!(source_line(&err).contains("container"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["objects"], 4, "{v}");
    let v = w.json(&["copy"]);
    assert_eq!(v["rows"], 40, "{v}");
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "expired credentials were not refreshed ({} requests to the endpoint)",
        hits.load(Ordering::SeqCst)
    );
}
