//! The status page in a real browser: headless Chromium (Debian's
//! `chromium`, installed by scripts/install-test-deps.sh) loads `GET /`
//! from a relay with a queue route and a stream route, runs its script,
//! and the rendered DOM is checked against `/status`. Also: the page says
//! "disconnected" when its data cannot be fetched, and `spillway status`
//! prints the same routes.
//!
//! `SPILLWAY_STATUS_SCREENSHOT=path` keeps the screenshot (how
//! docs/status.png is made).

mod common;

use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{http_get, refused_addr, tagged_echo, write_config, Relay};

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser"] {
        if Command::new(c).arg("--version").output().is_ok() {
            return c;
        }
    }
    panic!("chromium is not installed: run scripts/install-test-deps.sh");
}

/// Runs headless Chromium on `url` with `extra` flags; returns stdout and
/// stderr. Bounded: virtual time lets the page's timers run for `budget_ms`.
fn browse(url: &str, extra: &[&str], budget_ms: u32) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let out = Command::new("timeout")
        .arg("60")
        .arg(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Console messages Chromium logged at error level or for an uncaught
/// exception.
fn console_errors(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .filter(|l| l.contains("ERROR") || l.contains("Uncaught") || l.contains("Error"))
        .collect()
}

fn json(admin: std::net::SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = http_get(admin, path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

#[test]
fn the_status_page_renders_routes_depth_sparklines_and_a_down_upstream_in_chromium() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live = tagged_echo("");
    let (_held, dead) = refused_addr();
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[route]]
name = "logs"
mode = "queue"
from = "listen:127.0.0.1:0"
to = "listen:127.0.0.1:0"
spool = "{spool}"

[[route]]
name = "web"
mode = "stream"
listen = "127.0.0.1:0"
upstreams = ["{live}", "{dead}"]

[route.health_check]
interval = "200ms"
timeout = "100ms"
fall = 1
"#,
            spool = dir.path().join("spool").display()
        ),
    );
    let relay = Relay::start_ready(&["run", "--config", cfg.to_str().expect("utf-8")]);
    let admin = relay.admin();
    // Traffic: 2,000 lines queued with no consumer, a few proxied bytes.
    let mut p = TcpStream::connect(relay.addr("logs", "source")).expect("producer");
    for i in 0..2000 {
        writeln!(p, "line {i}").expect("write");
    }
    p.shutdown(Shutdown::Write).expect("close producer");
    let mut c = TcpStream::connect(relay.addr("web", "client")).expect("client");
    c.write_all(b"hello").expect("send");
    drop(c);
    // Wait (bounded) for the depth and a few history samples, and for the
    // dead upstream to be found down by its checks.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = json(admin, "/status");
        let h = json(admin, "/status/history?route=logs");
        let depth = s["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "logs"))
            .map(|r| r["depth"]["messages"].clone());
        let samples = h["routes"]["logs"]["t"].as_array().map_or(0, Vec::len);
        let dead_down = s["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "web"))
            .and_then(|r| r["upstreams"].as_array().cloned())
            .is_some_and(|u| {
                u.iter()
                    .any(|u| u["address"] == dead.to_string() && u["healthy"] == false)
            });
        if depth == Some(serde_json::json!(2000)) && samples >= 3 && dead_down {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never settled: {s}\n{h}\n{}",
            relay.log_text()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let shot = dir.path().join("status.png");
    let url = format!("http://{admin}/");
    let (dom, stderr) = browse(&url, &["--dump-dom"], 4000);
    let (_, shot_err) = browse(
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,860",
            "--hide-scrollbars",
        ],
        4000,
    );
    // The rendered DOM: both routes, the queue's depth as /status says it,
    // sparklines with points, the dead upstream marked down, live.
    let status = json(admin, "/status");
    let depth = status["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "logs"))
        .map(|r| r["depth"]["messages"].to_string())
        .expect("logs in /status");
    assert!(dom.contains(r#"data-route="logs""#), "{dom}");
    assert!(dom.contains(r#"data-route="web""#), "{dom}");
    assert!(
        dom.contains(&format!(r#"data-depth="{depth}""#)),
        "depth {depth} not rendered: {dom}"
    );
    let points = dom
        .split("points=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap_or("").split(' ').count())
        .max()
        .unwrap_or(0);
    assert!(points >= 3, "sparklines without points: {dom}");
    let dead_row = dom
        .split("<tr")
        .find(|row| row.contains(&dead.to_string()))
        .unwrap_or_else(|| panic!("no row for {dead}: {dom}"));
    assert!(dead_row.contains(r#"data-state="down""#), "{dead_row}");
    let live_row = dom
        .split("<tr")
        .find(|row| row.contains(&live.to_string()))
        .unwrap_or_else(|| panic!("no row for {live}: {dom}"));
    assert!(live_row.contains(r#"data-state="healthy""#), "{live_row}");
    assert!(dom.contains(">live<"), "not shown live: {dom}");
    // The proxied connection's close is listed, with its reason.
    let closes = json(admin, "/status/history?route=web");
    let reason = closes["routes"]["web"]["closes"][0]["reason"]
        .as_str()
        .expect("a close of web")
        .to_string();
    assert!(dom.contains("recent closes (1)"), "{dom}");
    assert!(dom.contains(&format!(">{reason}<")), "{reason}: {dom}");
    let errors = console_errors(&stderr);
    assert!(errors.is_empty(), "console errors: {errors:?}\n{stderr}");
    assert!(console_errors(&shot_err).is_empty(), "{shot_err}");
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    if let Ok(keep) = std::env::var("SPILLWAY_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, Path::new(&keep)).expect("keep the screenshot");
    }

    // The page and one update are small (10 routes would be too: the page
    // is fixed, an update grows by one sample and one /status entry each).
    let (_, page) = http_get(admin, "/");
    let (_, update) = http_get(admin, "/status");
    let now = json(admin, "/status/history")["now"].as_u64().expect("now");
    let (_, newest) = http_get(admin, &format!("/status/history?since={}", now - 2));
    assert!(
        page.len() + update.len() + newest.len() < 50 << 10,
        "page {} + update {} + {}",
        page.len(),
        update.len(),
        newest.len()
    );

    // The terminal view shows the same routes, without colour over a pipe.
    let out = Command::new(common::bin())
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .expect("spillway status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains('\x1b'), "{text}");
    assert!(text.lines().any(|l| l.starts_with("logs")), "{text}");
    assert!(
        text.contains(&dead.to_string()) && text.contains("down"),
        "{text}"
    );
}

#[test]
fn the_page_says_disconnected_when_its_data_cannot_be_fetched() {
    // The page alone, from a file: every fetch fails, as when the relay
    // is gone.
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start_ready(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--to",
        "127.0.0.1:9",
        "--admin",
        "127.0.0.1:0",
    ]);
    let (code, page) = http_get(relay.admin(), "/");
    assert_eq!(code, 200);
    drop(relay);
    let file = dir.path().join("page.html");
    std::fs::write(&file, page).expect("write page");
    let (dom, _) = browse(&format!("file://{}", file.display()), &["--dump-dom"], 3000);
    assert!(dom.contains(">disconnected<"), "{dom}");
    assert!(
        dom.contains("class=\"stale\"") || dom.contains("stale"),
        "{dom}"
    );
}
