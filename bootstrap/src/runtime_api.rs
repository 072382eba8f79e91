//! The one Runtime API call the launcher makes: `POST /init/error`, so the invoke that started
//! this environment fails with our `errorType` and message instead of a bare exit status.
//!
//! Plain HTTP/1.1 over a `TcpStream`: the Runtime API is an unencrypted local endpoint
//! (`AWS_LAMBDA_RUNTIME_API` is `host:port`; emulators may add a scheme and a base path), and one
//! request does not justify an async runtime in a launcher that must start fast.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Where requests go: `host:port` and the base path the paths are appended to.
#[derive(Debug, PartialEq, Eq)]
pub struct Endpoint {
    authority: String,
    base_path: String,
}

impl Endpoint {
    /// Parses `AWS_LAMBDA_RUNTIME_API`: `host:port`, `http://host:port` or `http://host:port/base`.
    pub fn parse(api: &str) -> io::Result<Self> {
        if api.starts_with("https://") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the Runtime API is plain HTTP, not {api}"),
            ));
        }
        let rest = api.strip_prefix("http://").unwrap_or(api);
        let (authority, base_path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no host in AWS_LAMBDA_RUNTIME_API={api:?}"),
            ));
        }
        Ok(Self {
            authority: authority.to_owned(),
            base_path: base_path.to_owned(),
        })
    }

    /// Posts an init error; `Ok` once the Runtime API answered with a 2xx status.
    pub fn post_init_error(&self, error_type: &str, body: &str) -> io::Result<()> {
        let mut stream = TcpStream::connect(&self.authority)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        let request = format!(
            "POST {}/2018-06-01/runtime/init/error HTTP/1.1\r\n\
             Host: {}\r\n\
             Lambda-Runtime-Function-Error-Type: {error_type}\r\n\
             Content-Type: application/json\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.base_path,
            self.authority,
            body.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut status_line = String::new();
        BufReader::new(stream).read_line(&mut status_line)?;
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        if status.starts_with('2') {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the Runtime API answered {:?}",
                status_line.trim_end()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    #[test]
    fn parses_what_lambda_and_emulators_set() -> io::Result<()> {
        let lambda = Endpoint::parse("127.0.0.1:9001")?;
        assert_eq!(
            (lambda.authority.as_str(), lambda.base_path.as_str()),
            ("127.0.0.1:9001", "")
        );
        let emulator = Endpoint::parse("http://127.0.0.1:9000/.rt/")?;
        assert_eq!(
            (emulator.authority.as_str(), emulator.base_path.as_str()),
            ("127.0.0.1:9000", "/.rt")
        );
        assert!(Endpoint::parse("https://example.com").is_err());
        assert!(Endpoint::parse("http:///x").is_err());
        Ok(())
    }

    #[test]
    fn posts_the_error_with_its_type() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let api = format!("http://{}/.rt", listener.local_addr()?);
        let server = std::thread::spawn(move || -> io::Result<String> {
            let (mut conn, _) = listener.accept()?;
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&request).contains("}") {
                let n = conn.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")?;
            Ok(String::from_utf8_lossy(&request).into_owned())
        });
        let body = r#"{"errorType":"LibTorchError","errorMessage":"m"}"#;
        Endpoint::parse(&api)?.post_init_error("LibTorchError", body)?;
        let request = server
            .join()
            .map_err(|_| io::Error::other("server panicked"))??;
        assert!(request.starts_with("POST /.rt/2018-06-01/runtime/init/error HTTP/1.1\r\n"));
        assert!(request.contains("Lambda-Runtime-Function-Error-Type: LibTorchError\r\n"));
        assert!(request.ends_with(body), "{request}");
        Ok(())
    }
}
