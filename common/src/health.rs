//! The `healthcheck` subcommand of both binaries: asks the running service's own
//! `/healthz` (or `/readyz`), so container images need no curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `Ok` if `GET path` on the service listening at `listen_addr` answers 200 within 3 s.
/// A wildcard listen address (`0.0.0.0`, `[::]`) is reached through loopback.
pub fn check(listen_addr: &str, path: &str) -> Result<(), String> {
    let (host, port) = listen_addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{listen_addr:?} is not host:port"))?;
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    let target = format!("{host}:{port}");
    let addr = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target}: no address"))?;
    let timeout = Duration::from_secs(3);
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{target}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).map_err(|e| e.to_string())?;
    let status = String::from_utf8_lossy(&head[..n]);
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        Some(code) => Err(format!("{path} answered {code}")),
        None => Err(format!("{path}: no HTTP answer")),
    }
}

/// The whole `healthcheck` subcommand: checks `/healthz` (or `/readyz` if `ready`) and
/// exits 0, or 1 with a one-line reason.
pub fn run(service: &str, listen_addr: &str, ready: bool) -> ! {
    let path = if ready { "/readyz" } else { "/healthz" };
    match check(listen_addr, path) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("{service}: unhealthy: {e}");
            std::process::exit(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_port_is_unhealthy_and_says_why() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = check(&format!("0.0.0.0:{port}"), "/healthz").unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    }

    #[test]
    fn a_200_is_healthy_and_a_503_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 200 OK\r\n\r\n",
                "HTTP/1.1 503 Service Unavailable\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 256];
                while !request.ends_with(b"\r\n\r\n") {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "request cut short");
                    request.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert_eq!(check(&addr, "/healthz"), Ok(()));
        assert_eq!(check(&addr, "/readyz"), Err("/readyz answered 503".into()));
        server.join().unwrap();
    }
}
