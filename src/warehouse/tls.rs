//! TLS to PostgreSQL through the system OpenSSL, set up per sslmode as libpq does it: `prefer`
//! and `require` encrypt without checking the server's certificate, so no trust store is
//! loaded (OpenSSL's default store is a parse of every system CA, tens of milliseconds on each
//! connection, for nothing); `verify-ca` checks the chain against `sslrootcert` only;
//! `verify-full` checks the host name too. SCRAM gets `tls-server-end-point` channel binding
//! from the server's certificate (RFC 5929), in every mode.

use crate::config::{PgTls, SslMode};
use anyhow::{Context as _, Result};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslMode as Mode, SslOptions, SslVerifyMode,
    SslVersion,
};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::verify::X509CheckFlags;
use openssl::x509::{X509VerifyResult, X509};
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use postgres::Socket;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes a TLS session for each connection of a `postgres::Config`.
pub struct Connector {
    ctx: SslContext,
    verify_host: bool,
}

impl Connector {
    /// The context for a TLS mode (not `disable`).
    pub fn new(tls: &PgTls) -> Result<Self> {
        let mut b = SslContextBuilder::new(SslMethod::tls_client())?;
        b.set_options(SslOptions::NO_COMPRESSION | SslOptions::NO_SSLV2 | SslOptions::NO_SSLV3);
        // PostgreSQL's own floor (ssl_min_protocol_version), as libpq's default.
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        // tokio-openssl retries a write that wanted more I/O with whatever buffer comes next.
        b.set_mode(
            Mode::AUTO_RETRY | Mode::ACCEPT_MOVING_WRITE_BUFFER | Mode::ENABLE_PARTIAL_WRITE,
        );
        let verify = matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull);
        if verify {
            let root = tls
                .root_cert
                .as_ref()
                .context("sslmode verify-ca/verify-full needs sslrootcert")?;
            let pem = std::fs::read(root)
                .with_context(|| format!("reading sslrootcert {}", root.display()))?;
            let mut store = X509StoreBuilder::new()?;
            for c in X509::stack_from_pem(&pem)
                .with_context(|| format!("sslrootcert {} is not PEM", root.display()))?
            {
                store.add_cert(c)?;
            }
            b.set_cert_store(store.build());
            b.set_verify(SslVerifyMode::PEER);
        } else {
            b.set_verify(SslVerifyMode::NONE);
        }
        Ok(Connector {
            ctx: b.build(),
            verify_host: tls.mode == SslMode::VerifyFull,
        })
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = BoxError;

    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, BoxError> {
        let mut ssl = Ssl::new(&self.ctx)?;
        let ip = host.parse::<IpAddr>().ok();
        if ip.is_none() {
            ssl.set_hostname(host)?; // SNI: a name, never an address
        }
        if self.verify_host {
            let p = ssl.param_mut();
            p.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match ip {
                Some(ip) => p.set_ip(ip)?,
                None => p.set_host(host)?,
            }
        }
        Ok(Handshake(ssl))
    }
}

/// One connection's handshake.
pub struct Handshake(Ssl);

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let mut s = tokio_openssl::SslStream::new(self.0, socket)?;
            if let Err(e) = Pin::new(&mut s).connect().await {
                let v = s.ssl().verify_result();
                return Err(if v == X509VerifyResult::OK {
                    e.into()
                } else {
                    format!("{e}: certificate verify failed: {v}").into()
                });
            }
            Ok(Stream(s))
        })
    }
}

/// A TLS session over the connection's socket.
pub struct Stream(tokio_openssl::SslStream<Socket>);

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for Stream {
    /// `tls-server-end-point`: the hash of the server's certificate, with the hash of its
    /// signature algorithm (SHA-256 where that is MD5 or SHA-1).
    fn channel_binding(&self) -> ChannelBinding {
        let Some(cert) = self.0.ssl().peer_certificate() else {
            return ChannelBinding::none();
        };
        let digest = cert
            .signature_algorithm()
            .object()
            .nid()
            .signature_algorithms()
            .and_then(|a| match a.digest {
                Nid::MD5 | Nid::SHA1 => Some(MessageDigest::sha256()),
                d => MessageDigest::from_nid(d),
            });
        match digest.map(|md| cert.digest(md)) {
            Some(Ok(hash)) => ChannelBinding::tls_server_end_point(hash.to_vec()),
            _ => ChannelBinding::none(),
        }
    }
}
