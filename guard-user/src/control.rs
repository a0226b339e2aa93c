//! guardctl <-> guardd: one JSON request and one JSON response per connection
//! on a root-only UNIX socket.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub const DEFAULT_SOCKET: &str = "/run/guard/guardd.sock";

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Validate, resolve and atomically apply a policy: its JSON text, or a
    /// signed document holding it (required when policy signing is on).
    Apply { policy: String },
    /// The applied policy, its hash, when it was applied, binary checks.
    Show,
    /// Enforcement state and counters.
    Status,
    /// Stop guardd, lifting its self-protection; enforcement stays armed.
    /// With policy signing on, `order` must be a signed stop order.
    Stop {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<String>,
    },
    /// This guardd's nonce, which a signed order must carry.
    Challenge,
    /// A signed disarm order: detach the programs, remove the pins, exit.
    Disarm { order: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: impl Serialize) -> Self {
        Response {
            ok: true,
            error: None,
            data: serde_json::to_value(data).unwrap_or_default(),
        }
    }
    pub fn err(error: impl std::fmt::Display) -> Self {
        Response {
            ok: false,
            error: Some(error.to_string()),
            data: serde_json::Value::Null,
        }
    }
}

/// Sends one request to guardd and returns its data, or its error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach guardd at {} (is it running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("reading guardd's reply")?;
    let response: Response = serde_json::from_str(&reply)
        .with_context(|| format!("guardd sent an unreadable reply: {reply:?}"))?;
    if !response.ok {
        bail!(
            "{}",
            response.error.unwrap_or_else(|| "guardd refused".into())
        );
    }
    Ok(response.data)
}
