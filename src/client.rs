//! A blocking client of the daemon API (used by the CLI and the tests). Requests may be
//! pipelined: [`Client::send`] several, then [`Client::recv`] replies in completion order.

use crate::api::{frame_message, MessageDecoder, Oversize};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed.
    #[error("daemon connection: {0}")]
    Io(#[from] io::Error),
    /// The daemon closed the connection.
    #[error("the daemon closed the connection")]
    Closed,
    /// The daemon sent something that is not a reply.
    #[error("bad reply from daemon: {0}")]
    Protocol(String),
    /// The request failed (the daemon's error object).
    #[error("{host}: {kind}: {message}")]
    Api {
        /// Error kind (`docs/api.md`).
        kind: String,
        /// Target label.
        host: String,
        /// Operator-readable message.
        message: String,
    },
}

impl From<Oversize> for ClientError {
    fn from(e: Oversize) -> Self {
        ClientError::Protocol(e.to_string())
    }
}

/// One reply: its id and the result or error.
#[derive(Debug)]
pub struct Reply {
    /// The request id it answers.
    pub id: u64,
    /// `Ok(result)` or `Err(ClientError::Api)`.
    pub result: Result<serde_json::Value, ClientError>,
}

/// A connection to the daemon.
pub struct Client {
    stream: UnixStream,
    dec: MessageDecoder,
    next_id: u64,
    buf: Vec<u8>,
}

impl Client {
    /// Connects to the daemon's socket.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Ok(Client {
            stream: UnixStream::connect(path)?,
            dec: MessageDecoder::default(),
            next_id: 1,
            buf: vec![0u8; 64 * 1024],
        })
    }

    /// Sends a request object (its `id` is assigned here and returned).
    pub fn send(&mut self, mut req: serde_json::Value) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = id.into();
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut msg = Vec::with_capacity(body.len() + 4);
        frame_message(&mut msg, &body);
        self.stream.write_all(&msg)?;
        Ok(id)
    }

    /// Waits for the next reply.
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        loop {
            if let Some(body) = self.dec.next_message()? {
                let v: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                let id = v["id"]
                    .as_u64()
                    .ok_or_else(|| ClientError::Protocol("no id".into()))?;
                let result = if v["ok"].as_bool() == Some(true) {
                    Ok(v["result"].clone())
                } else {
                    let e = &v["error"];
                    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                    Err(ClientError::Api {
                        kind: s("kind"),
                        host: s("host"),
                        message: s("message"),
                    })
                };
                return Ok(Reply { id, result });
            }
            let n = self.stream.read(&mut self.buf)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.dec.push(&self.buf[..n]);
        }
    }

    /// Sends one request and waits for its reply (no other request may be in flight).
    pub fn call(&mut self, req: serde_json::Value) -> Result<serde_json::Value, ClientError> {
        let id = self.send(req)?;
        let r = self.recv()?;
        if r.id != id {
            return Err(ClientError::Protocol(format!(
                "reply {} for request {id}",
                r.id
            )));
        }
        r.result
    }
}
