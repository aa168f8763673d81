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

/// Checks, before anything starts, that the ready file can be written at
/// `path` (not a directory, in a directory that exists and is writable),
/// so a supervisor never waits for a file that cannot appear.
pub fn check(path: &Path) -> std::io::Result<()> {
    if path.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is a directory",
        ));
    }
    let tmp = temp_path(path);
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::path::PathBuf::from(tmp)
}

/// Writes the ready file at `path`: a temp file next to it, synced, then
/// renamed over it (a reader sees the old file or the new one, whole).
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
    let tmp = temp_path(path);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, format!("{doc}\n").as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}
