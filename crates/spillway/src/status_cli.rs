//! `spillway status [--admin ADDR] [--watch]`: the status page's data as
//! a compact table in a terminal, like `nsq_stat` or `hatop`. It reads
//! `/status` and the newest samples of `/status/history` from the admin
//! endpoint. On a terminal, `--watch` redraws in place and marks trouble
//! in colour; over a pipe there are no colours and no cursor movement
//! (each refresh is a new table after a blank line).

use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde_json::Value;

/// How to reach the admin endpoint.
pub struct Target {
    pub admin: String,
    pub token: Option<String>,
}

const TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER: usize = 16 << 20;

/// A string from the server, with control characters (escape sequences,
/// newlines) shown as `?`: what a relay's config or a stranger's server
/// says must not move the cursor or forge a row.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `GET path` on the admin endpoint, as JSON.
pub fn get_json(target: &Target, path: &str) -> Result<Value, String> {
    let addr = target
        .admin
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", target.admin))?
        .next()
        .ok_or_else(|| format!("{} resolved to no address", target.admin))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|e| format!("cannot connect to the admin endpoint {addr}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let auth = target
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        target.admin
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // One deadline for the whole answer (a server that trickles bytes
    // cannot hold the command), and a bound on its size.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(format!("{path}: no complete answer within {TIMEOUT:?}"));
        }
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("{path}: no complete answer within {TIMEOUT:?}"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading {path}: {e}")),
        }
        if raw.len() > MAX_ANSWER {
            return Err(format!("{path}: answer larger than {MAX_ANSWER} bytes"));
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{path}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        return Err(format!("{path}: {status}: {}", body.trim()));
    }
    // Chunked bodies do not occur (hyper sends Content-Length for a full
    // body), but be strict rather than guess.
    serde_json::from_str(body.trim()).map_err(|e| format!("{path}: invalid JSON: {e}"))
}

/// The latest rate in and out per route, from the history's newest samples.
fn latest_rates(history: &Value, route: &str) -> (Option<f64>, Option<f64>) {
    let cols = &history["routes"][route];
    let last = |k: &str| {
        cols[k]
            .as_array()
            .and_then(|a| a.last())
            .and_then(Value::as_f64)
    };
    (last("rate_in"), last("rate_out"))
}

fn human(x: Option<f64>) -> String {
    let Some(mut v) = x else {
        return "-".into();
    };
    let units = ["", "k", "M", "G", "T"];
    let mut i = 0;
    while v.abs() >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}{}", units[i])
    }
}

fn age(secs: Option<f64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120.0 => format!("{s:.0}s"),
        Some(s) if s < 7200.0 => format!("{:.0}m", s / 60.0),
        Some(s) => format!("{:.0}h", s / 3600.0),
    }
}

/// What is wrong with a route, as the page marks it.
fn trouble(r: &Value, now: u64) -> Vec<String> {
    let mut t = Vec::new();
    if r["poisoned"].as_bool() == Some(true) {
        t.push("spool poisoned".into());
    }
    if r["blocked_producers"].as_u64().unwrap_or(0) > 0 {
        t.push("producers blocked".into());
    }
    if let Some(since) = r["no_consumer_since"].as_u64() {
        if now.saturating_sub(since) > 60 {
            t.push(format!(
                "no consumer for {}",
                age(Some(now.saturating_sub(since) as f64))
            ));
        }
    }
    if let Some(ups) = r["upstreams"].as_array() {
        let down = |u: &Value| {
            u["healthy"].as_bool() == Some(false) || u["ejected"].as_bool() == Some(true)
        };
        if !ups.is_empty() && ups.iter().all(down) {
            t.push("every upstream down".into());
        }
    }
    t
}

/// The table for one `/status` (and the history's newest samples).
pub fn render(status: &Value, history: &Value, colour: bool) -> String {
    let now = history["now"].as_u64().unwrap_or(0);
    let (red, green, off) = if colour {
        ("\x1b[31m", "\x1b[32m", "\x1b[0m")
    } else {
        ("", "", "")
    };
    let mut out = String::new();
    let state = if status["draining"].as_bool() == Some(true) {
        "draining"
    } else if status["ready"].as_bool() == Some(true) {
        "ready"
    } else {
        "not ready"
    };
    let reload = match status["reloads"]["last_result"].as_str() {
        Some(r) => format!("last reload {}", clean(r)),
        None => "no reload".into(),
    };
    let _ = writeln!(
        out,
        "spillway {}  {state}  {reload}",
        clean(status["version"].as_str().unwrap_or("?"))
    );
    let _ = writeln!(
        out,
        "{:<16} {:<6} {:<8} {:>8} {:>8} {:>17} {:>7} {:>5}  trouble",
        "ROUTE", "MODE", "STATE", "IN/s", "OUT/s", "QUEUED mem/disk", "OLDEST", "CONNS"
    );
    for r in status["routes"].as_array().into_iter().flatten() {
        let name = clean(r["name"].as_str().unwrap_or("?"));
        let name = name.as_str();
        let mode = r["mode"].as_str().unwrap_or("?");
        let (rin, rout) = latest_rates(history, r["name"].as_str().unwrap_or("?"));
        let (queued, oldest, conns) = if mode == "queue" {
            let d = &r["depth"];
            (
                format!(
                    "{}/{}",
                    human(d["memory_messages"].as_f64()),
                    human(d["disk_messages"].as_f64())
                ),
                age(r["oldest_age_seconds"].as_f64()),
                r["producers"]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_add(r["consumers"].as_u64().unwrap_or(0)),
            )
        } else {
            (
                "-".into(),
                "-".into(),
                r["connections_active"].as_u64().unwrap_or(0),
            )
        };
        let t = trouble(r, now);
        let flag = if t.is_empty() {
            format!("{green}ok{off}")
        } else {
            format!("{red}{}{off}", t.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<16} {:<6} {:<8} {:>8} {:>8} {:>17} {:>7} {:>5}  {flag}",
            name,
            clean(mode),
            clean(r["state"].as_str().unwrap_or("?")),
            human(rin),
            human(rout),
            queued,
            oldest,
            conns
        );
        for u in r["upstreams"].as_array().into_iter().flatten() {
            let st = if u["ejected"].as_bool() == Some(true) {
                "ejected"
            } else if u["healthy"].as_bool() == Some(false) {
                "down"
            } else {
                "healthy"
            };
            let c = if st == "healthy" { green } else { red };
            let errors: u64 = u["connect_failures"].as_object().map_or(0, |m| {
                m.values()
                    .filter_map(Value::as_u64)
                    .fold(0u64, u64::saturating_add)
            });
            let _ = writeln!(
                out,
                "  -> {:<28} {c}{:<8}{off} active {:<5} picks {:<8} connect errors {}",
                clean(u["address"].as_str().unwrap_or("?")),
                st,
                u["active"].as_u64().unwrap_or(0),
                u["picked"].as_u64().unwrap_or(0),
                errors
            );
        }
    }
    out
}

/// Runs the command: once, or every second with `watch`.
pub fn run(target: &Target, watch: bool) -> Result<(), String> {
    let tty = std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout();
    loop {
        let now = crate::units::since_epoch().as_secs();
        let fetched = get_json(target, "/status").and_then(|s| {
            let h = get_json(
                target,
                &format!("/status/history?since={}", now.saturating_sub(3)),
            )?;
            Ok((s, h))
        });
        let text = match fetched {
            Ok((s, h)) => render(&s, &h, tty),
            Err(e) if watch => format!("disconnected: {e}\n"),
            Err(e) => return Err(e),
        };
        if !watch {
            // A closed pipe (`| head`) is not an error.
            let _ = stdout
                .write_all(text.as_bytes())
                .and_then(|()| stdout.flush());
            return Ok(());
        }
        let written = if tty {
            write!(stdout, "\x1b[H\x1b[2J{text}")
        } else {
            writeln!(stdout, "{text}")
        };
        // A closed pipe (`| head`) ends the watch.
        if written.and_then(|()| stdout.flush()).is_err() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A server that trickles its answer cannot hold the command: one
    /// deadline covers the whole answer, not each read.
    #[test]
    fn a_trickling_server_meets_the_deadline() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let admin = l.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let _ = c.read(&mut [0u8; 1024]);
            let _ = c.write_all(b"HTTP/1.1 200 OK\r\n");
            // One byte every 300 ms for up to 20 s: each read succeeds.
            for _ in 0..66 {
                std::thread::sleep(Duration::from_millis(300));
                if c.write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let target = Target { admin, token: None };
        let e = get_json(&target, "/status").expect_err("a trickle is no answer");
        assert!(e.contains("no complete answer within"), "{e}");
        drop(server);
    }

    #[test]
    fn the_table_has_a_row_per_route_and_marks_trouble_without_colour_over_a_pipe() {
        let status = json!({
            "version": "9.9.9", "ready": true, "draining": false,
            "reloads": {"last_result": "success"},
            "routes": [
                {"name": "logs", "mode": "queue", "state": "serving",
                 "depth": {"memory_messages": 1200, "disk_messages": 3_400_000},
                 "oldest_age_seconds": 75.0, "producers": 2, "consumers": 0,
                 "no_consumer_since": 100, "blocked_producers": 0, "poisoned": false},
                {"name": "web", "mode": "stream", "state": "serving", "connections_active": 3,
                 "upstreams": [{"address": "10.0.0.1:80", "healthy": false, "ejected": false,
                                "active": 0, "picked": 7, "connect_failures": {"transient": 4}}]}
            ]
        });
        let history = json!({"now": 400, "routes": {
            "logs": {"rate_in": [10.0, 2500.0], "rate_out": [0.0, 0.0]},
            "web": {"rate_in": [1.5e6], "rate_out": [2.0e6]}}});
        let t = render(&status, &history, false);
        assert!(!t.contains('\x1b'), "{t}");
        let logs = t.lines().find(|l| l.starts_with("logs")).expect("logs row");
        assert!(logs.contains("2.5k") && logs.contains("1.2k/3.4M") && logs.contains("75s"));
        assert!(logs.contains("no consumer for 5m"), "{logs}");
        let web = t.lines().find(|l| l.starts_with("web")).expect("web row");
        assert!(web.contains("1.5M") && web.contains("2.0M"));
        assert!(web.contains("every upstream down"), "{web}");
        assert!(t.contains("10.0.0.1:80") && t.contains("down"), "{t}");
        assert!(render(&status, &history, true).contains("\x1b[31m"));
        // What the server says cannot move the cursor or forge a row.
        let mut evil = status.clone();
        evil["routes"][0]["name"] = json!("x\x1b[2J\nfake 1 2 3");
        let t = render(&evil, &history, false);
        assert!(!t.contains('\x1b') && !t.contains("\nfake"), "{t}");
    }
}
