//! `--ready-file PATH`: once every route serves (at start, and again after
//! each reload, applied or rejected), the relay writes what it bound to
//! PATH, as JSON, atomically (a temp file renamed over it). A supervisor or
//! a test starts the relay on port 0 and reads the ports from here, instead
//! of choosing a free port and hoping it stays free:
//!
//! ```json
//! {"pid": 4242, "admin": "127.0.0.1:40123", "reloads": 0,
//!  "routes": {"web": {"client": "127.0.0.1:40124"},
//!             "logs": {"source": "127.0.0.1:40125", "sink": "127.0.0.1:40126"}}}
//! ```
//!
//! `reloads` counts the reloads handled so far (applied or rejected), so a
//! reader can wait for the one it asked for.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::{json, Map, Value};

/// One serving route: its name and its bound listeners by role.
pub struct Bound<'a> {
    pub route: &'a str,
    pub listeners: &'a [(&'static str, SocketAddr)],
}

/// Writes the ready file at `path` (a temp file next to it, renamed over it).
pub fn write<'a>(
    path: &Path,
    admin: Option<SocketAddr>,
    reloads: u64,
    routes: impl IntoIterator<Item = Bound<'a>>,
) -> std::io::Result<()> {
    let mut by_name = Map::new();
    for r in routes {
        let listeners: Map<String, Value> = r
            .listeners
            .iter()
            .map(|(role, addr)| ((*role).to_string(), Value::String(addr.to_string())))
            .collect();
        by_name.insert(r.route.to_string(), Value::Object(listeners));
    }
    let doc = json!({
        "pid": std::process::id(),
        "admin": admin.map(|a| a.to_string()),
        "reloads": reloads,
        "routes": by_name,
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{doc}\n"))?;
    std::fs::rename(&tmp, path)
}
