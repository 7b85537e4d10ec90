//! A counting HTTP proxy in front of the shared s3s-fs: one request per connection (it
//! answers `Connection: close`), each request's method and path recorded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The requests the proxy forwarded, as "METHOD /bucket/key?query".
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<Vec<String>>>);

impl Requests {
    /// Takes the requests recorded so far.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Starts the proxy; returns its endpoint URL and the request log.
pub fn counting_proxy() -> (String, Requests) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let log = Requests::default();
    let shared = log.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { break };
            let log = shared.clone();
            std::thread::spawn(move || {
                let _ = forward_one(conn, &log);
            });
        }
    });
    (format!("http://127.0.0.1:{port}"), log)
}

/// Reads an HTTP head (through the blank line) from `r`; None at end of stream.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if line == "\r\n" {
            return Ok(Some(lines));
        }
        lines.push(line.trim_end().to_string());
    }
}

fn without_connection(head: Vec<String>) -> Vec<String> {
    head.into_iter()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect()
}

fn forward_one(conn: TcpStream, log: &Requests) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let Some(head) = read_head(&mut r)? else {
        return Ok(());
    };
    let len: usize = head
        .iter()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let request_line = head[0].clone();
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    log.0.lock().unwrap().push(format!("{method} {path}"));
    let mut up = TcpStream::connect("127.0.0.1:9000")?;
    let mut out = without_connection(head).join("\r\n");
    out.push_str("\r\nConnection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut up_r = BufReader::new(up);
    let Some(resp) = read_head(&mut up_r)? else {
        return Ok(());
    };
    let mut back = without_connection(resp).join("\r\n");
    back.push_str("\r\nConnection: close\r\n\r\n");
    let mut w = conn;
    w.write_all(back.as_bytes())?;
    std::io::copy(&mut up_r, &mut w)?;
    w.flush()
}
