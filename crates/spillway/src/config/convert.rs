//! Raw → model: reads the file, deserializes it into the [`raw`](super::raw)
//! structs and converts them into the validated [`model`](super::model),
//! every error at its `file:line:col`. Here: the positions, `[global]`,
//! `[admin]`, and the helpers of every table; each `[[route]]` is
//! [`route`](super::route)'s.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::model::{Config, Global, Route};
use super::raw::{RawConfig, S};
use super::route;
use crate::units::HumanDuration;

/// A config error with its position in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.path.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// The text being converted, to turn spans into `file:line:col`.
pub(super) struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    pub(super) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError {
            path: self.path.to_path_buf(),
            line,
            col,
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        path: path.to_path_buf(),
        line: 0,
        col: 0,
        message: format!("cannot read config: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        src.error(span, e.message().trim().to_string())
    })?;
    let mut global = Global::default();
    if let Some(g) = raw.global {
        if let Some(v) = g.max_spill_total {
            global.max_spill_total = v.bytes();
        }
        if let Some(v) = g.drain_timeout {
            global.drain_timeout = v.0;
        }
        if let Some(v) = g.max_connections {
            global.max_connections = Some(at_least_one(&src, &v, "max_connections")?);
        }
        if let Some(v) = g.peer_memory {
            global.peer_memory = v.get_ref().bytes();
            if global.peer_memory < (1 << 20) {
                return Err(src.error(v.span(), "peer_memory must be at least 1MiB"));
            }
        }
    }
    if let Some(a) = raw.admin {
        global.admin = Some(a.listen);
        global.admin_token_file = a.token_file.map(PathBuf::from);
    }

    let mut routes: Vec<Route> = Vec::new();
    for spanned in raw.route {
        let span = spanned.span();
        let route = route::route(
            &src,
            &span,
            spanned.into_inner(),
            &routes,
            global.peer_memory,
        )?;
        routes.push(route);
    }
    if routes.is_empty() {
        return Err(src.error(0..0, "no routes: add at least one [[route]] table"));
    }
    Ok(Config { global, routes })
}

pub(super) fn required<T>(
    src: &Source<'_>,
    table: &Range<usize>,
    v: S<T>,
    key: &str,
) -> Result<Spanned<T>, ConfigError> {
    v.ok_or_else(|| {
        src.error(
            table.clone(),
            format!("route is missing required key '{key}'"),
        )
    })
}

/// A key that belongs to the other mode is an error, not silently ignored.
pub(super) fn reject<T>(
    src: &Source<'_>,
    v: &S<T>,
    key: &str,
    mode: &str,
) -> Result<(), ConfigError> {
    match v {
        Some(v) => Err(src.error(
            v.span(),
            format!("key '{key}' is not valid in a {mode} route"),
        )),
        None => Ok(()),
    }
}

/// `"0s"` turns an optional timeout off.
pub(super) fn optional_duration(v: &Spanned<HumanDuration>) -> Option<Duration> {
    Some(v.get_ref().0).filter(|d| !d.is_zero())
}

pub(super) fn ipv6_prefix(src: &Source<'_>, v: &Spanned<u64>) -> Result<u8, ConfigError> {
    match u8::try_from(*v.get_ref()) {
        Ok(p) if (1..=128).contains(&p) => Ok(p),
        _ => Err(src.error(
            v.span(),
            "per_ip_ipv6_prefix must be between 1 and 128 (bits of an IPv6 address that name one client)",
        )),
    }
}

pub(super) fn at_least_one(
    src: &Source<'_>,
    v: &Spanned<u64>,
    key: &str,
) -> Result<usize, ConfigError> {
    if *v.get_ref() == 0 {
        return Err(src.error(v.span(), format!("{key} must be at least 1")));
    }
    Ok(usize::try_from(*v.get_ref()).unwrap_or(usize::MAX))
}

pub(super) fn nonzero_duration(
    src: &Source<'_>,
    v: &Spanned<HumanDuration>,
    key: &str,
) -> Result<Duration, ConfigError> {
    if v.get_ref().0.is_zero() {
        return Err(src.error(v.span(), format!("{key} must be greater than zero")));
    }
    Ok(v.get_ref().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    #[test]
    fn errors_have_line_and_column() {
        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbufer = \"1MiB\"\n")
            .expect_err("unknown key");
        assert_eq!((e.line, e.col), (6, 1), "{e}");
        assert!(e.message.contains("bufer"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\nupstreams = [\"x:1\"]\nbuffer = \"12XB\"\n")
            .expect_err("bad size");
        assert_eq!(e.line, 6, "{e}");
        assert!(e.message.contains("unknown unit"), "{e}");

        let e = p("[[route]]\nname = \"a\"\nmode = \"strem\"\n").expect_err("bad mode");
        assert_eq!((e.line, e.col), (3, 8), "{e}");

        let e = p("[[route]\n").expect_err("syntax");
        assert_eq!(e.line, 1, "{e}");
        assert!(e.to_string().starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn semantic_errors() {
        let base = "[[route]]\nname = \"a\"\nmode = \"stream\"\nlisten = \"127.0.0.1:1\"\n";
        let e = p(&format!("{base}upstreams = []\n")).expect_err("no upstream");
        assert_eq!(e.line, 5);
        let e = p(&format!("{base}upstreams = [\"nohost\"]\n")).expect_err("no port");
        assert!(e.message.contains("HOST:PORT"));
        let e = p(&format!(
            "{base}upstreams = [\"a:1\"]\nmax_spill = \"1MiB\"\n"
        ))
        .expect_err("spill");
        assert!(e.message.contains("spill_dir"));
        let e = p("").expect_err("empty");
        assert!(e.message.contains("no routes"));
        let dup = format!(
            "{base}upstreams = [\"a:1\"]\n{}",
            base.replace("127.0.0.1:1", "127.0.0.1:2")
        );
        let e = p(&format!("{dup}upstreams = [\"a:1\"]\n")).expect_err("dup");
        assert!(e.message.contains("duplicate"), "{e}");
    }
}
