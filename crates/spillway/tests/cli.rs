//! The command line as a user meets it: example configs validate, the
//! offline spool tools report on a real spool and fail loudly on a corrupt
//! one, flags are checked before anything starts.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bin;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("repo root")
        .to_path_buf()
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .args(args)
        .output()
        .expect("run spillway");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs flags that should be refused: a build that accepts them would start
/// serving, so the wait is bounded (still running after 10 s counts as
/// accepted). Returns whether they were accepted, and stderr.
fn run_refused(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status.is_none_or(|s| s.success()), err)
}

#[test]
fn every_example_config_validates() {
    let dir = repo_root().join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let (ok, out, err) = run(&["check", "--config", path.to_str().expect("utf8")]);
        assert!(ok, "{}: {err}", path.display());
        assert!(out.contains(": ok"), "{out}");
        checked += 1;
    }
    assert!(checked >= 2, "expected the stream and queue examples");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn spool_verify_names_the_bad_segment_and_offset() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = tmp.path().join("spool");
    copy_dir(
        &repo_root().join("crates/spillway-spool/tests/fixtures/bad_crc_middle"),
        &spool,
    );
    let (ok, out, err) = run(&["spool", "verify", spool.to_str().expect("utf8")]);
    assert!(!ok, "verify passed a corrupt spool:\n{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains(".seg"), "no segment named:\n{text}");
    assert!(text.contains("offset"), "no offset:\n{text}");
}

#[test]
fn spool_tools_on_a_queue_written_by_the_relay() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = tmp.path().join("spool");
    // Write a spool through the engine the relay uses, then look at it offline.
    {
        let (s, _) = spillway_spool::Spool::open(spillway_spool::SpoolConfig {
            memory_limit: 0,
            ..spillway_spool::SpoolConfig::new(&spool)
        })
        .expect("open");
        let lines: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
        s.append(&refs).expect("append");
        s.close().expect("close");
    }
    let dir = spool.to_str().expect("utf8");
    let (ok, out, err) = run(&["spool", "inspect", dir]);
    assert!(ok, "{err}");
    assert!(out.contains("next_seq=100"), "{out}");
    let (ok, out, err) = run(&["spool", "verify", dir]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = run(&["spool", "dump", dir, "--from", "10", "--limit", "3"]);
    assert!(ok, "{err}");
    assert_eq!(out, "line 10\nline 11\nline 12\n");
}

#[test]
fn bad_flags_are_refused_before_starting() {
    let (ok, _, err) = run(&[
        "queue",
        "--from",
        "dial:127.0.0.1:1",
        "--to",
        "listen:127.0.0.1:2",
        "--spool",
        "/tmp/x",
    ]);
    assert!(!ok);
    assert!(err.contains("neither listen nor connect"), "{err}");
    let (ok, _, err) = run(&[
        "queue",
        "--from",
        "listen:127.0.0.1:1",
        "--to",
        "listen:127.0.0.1:2",
        "--spool",
        "/tmp/x",
        "--framing",
        "len:u24",
    ]);
    assert!(!ok);
    assert!(
        err.contains("len:u32be"),
        "the error lists the valid framings: {err}"
    );
    let (ok, _, err) = run(&[
        "queue",
        "--from",
        "listen:127.0.0.1:1",
        "--to",
        "listen:127.0.0.1:2",
        "--spool",
        "/tmp/x",
        "--fsync",
        "sometimes",
    ]);
    assert!(!ok);
    assert!(err.contains("always, never or a duration"), "{err}");
    let (ok, _, err) = run(&["relay", "--listen", "127.0.0.1:1", "--to", "nohost"]);
    assert!(!ok);
    assert!(err.contains("HOST:PORT"), "{err}");
}

#[test]
fn a_second_relay_on_the_same_spool_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = tmp.path().join("spool");
    let (_s, _) =
        spillway_spool::Spool::open(spillway_spool::SpoolConfig::new(&spool)).expect("open");
    let (ok, _, err) = run(&[
        "queue",
        "--from",
        "listen:127.0.0.1:0",
        "--to",
        "listen:127.0.0.1:0",
        "--spool",
        spool.to_str().expect("utf8"),
    ]);
    assert!(!ok, "started on a locked spool");
    assert!(err.contains("in use by another process"), "{err}");
}

/// The shipped systemd unit is valid for systemd (`systemd-analyze verify`,
/// installed by scripts/install-test-deps.sh), and starts the binary the
/// way the CLI contract says.
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(repo_root().join("examples/spillway.service"))
        .expect("examples/spillway.service");
    assert!(unit.contains("\nType=notify\n"), "sd_notify is implemented");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spillway.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/spillway", bin())).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (run scripts/install-test-deps.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.trim().is_empty(), "{stderr}");
}

/// Durations and sizes a config file controls are capped at parse time:
/// overflowing ones are `file:line:col` errors, not a panic (exit 101) in
/// `check`, in a SIGHUP reload, or at the first connection (`now + d`).
#[test]
fn overflowing_durations_and_sizes_are_config_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "drain_timeout",
            "\"213503982334601d213503982334601d\"",
            "too long",
        ),
        ("max_lifetime", "\"200000000000000d\"", "too long"),
        ("max_disk", "\"99999999TiB\"", "too large"),
    ];
    for (key, value, want) in cases {
        let (global, route) = if key == "drain_timeout" {
            (format!("[global]\n{key} = {value}\n"), String::new())
        } else {
            (String::new(), format!("{key} = {value}\n"))
        };
        let text = format!(
            "{global}\n[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\n\
             to = \"listen:127.0.0.1:2\"\nspool = \"{}\"\n{route}",
            tmp.path().join("spool").display()
        );
        let path = tmp.path().join("c.toml");
        std::fs::write(&path, text).expect("write");
        let out = Command::new(bin())
            .args(["check", "--config", path.to_str().expect("utf8")])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}: {err}");
        assert!(
            err.contains(want) && err.contains("c.toml:"),
            "{key}: {err}"
        );
    }
}

/// An existing spool that other local users can read is reported by the
/// offline tools (and at start, in the relay's log).
#[test]
fn spool_inspect_warns_about_a_readable_spool() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tempdir");
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).expect("mkdir");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ok, _, err) = run(&["spool", "inspect", spool.to_str().expect("utf8")]);
    assert!(ok, "{err}");
    assert!(
        err.contains("mode 755") && err.contains("other local users"),
        "{err}"
    );
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let (ok, _, err) = run(&["spool", "inspect", spool.to_str().expect("utf8")]);
    assert!(ok && !err.contains("warning"), "{err}");
}

/// The unit's sandboxing, as systemd rates it: at most 2.0 ("OK").
#[test]
fn systemd_unit_exposure_is_ok() {
    let unit = repo_root().join("examples/spillway.service");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze (run scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure figure:\n{text}"));
    let figure: f64 = line
        .rsplit(':')
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable figure: {line}"));
    assert!(figure <= 2.0, "exposure {figure} (goal <= 2.0): {line}");
    assert!(line.contains("OK"), "{line}");
}

/// The command line gets the same range checks as the config file: a
/// route built from flags is validated once, like one from TOML (with
/// `--buffer 0` the user-space copy read into an empty slice and took that
/// for EOF).
#[test]
fn flags_get_the_config_files_range_checks() {
    let relay = |extra: &[&str]| {
        let mut a = vec!["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:2"];
        a.extend_from_slice(extra);
        run_refused(&a)
    };
    for (flag, value, want) in [
        ("--buffer", "0", "--buffer must be between 4KiB and 64MiB"),
        ("--buffer", "1GiB", "--buffer must be between"),
        ("--pipe-size", "1", "--pipe-size must be between"),
        ("--connect-tries", "0", "--connect-tries must be at least 1"),
        (
            "--max-connections",
            "0",
            "--max-connections must be at least 1",
        ),
        (
            "--connect-timeout",
            "0s",
            "--connect-timeout must be greater than zero",
        ),
        (
            "--idle-timeout",
            "0s",
            "--idle-timeout must be greater than zero",
        ),
        (
            "--drain-timeout",
            "0s",
            "--drain-timeout must be greater than zero",
        ),
    ] {
        let (ok, err) = relay(&[flag, value]);
        assert!(!ok, "{flag} {value} was accepted");
        assert!(err.contains(want), "{flag} {value}: {err}");
    }
    let (ok, _, err) = run(&[
        "queue",
        "--from",
        "listen:127.0.0.1:1",
        "--to",
        "listen:127.0.0.1:2",
        "--spool",
        "/tmp/x",
        "--connect-timeout",
        "0s",
    ]);
    assert!(
        !ok && err.contains("--connect-timeout must be greater than zero"),
        "{err}"
    );
}

/// `--jetstream` and `--jetstream-stream` come together, and each flag is
/// checked as its `[route.jetstream]` key is, before anything starts.
#[test]
fn jetstream_flags_are_refused_before_starting() {
    let queue = [
        "queue",
        "--from",
        "listen:127.0.0.1:0",
        "--to",
        "listen:127.0.0.1:0",
        "--spool",
        "/nonexistent/spillway-cli-test",
    ];
    for (extra, want) in [
        (
            &["--jetstream", "nats://127.0.0.1:4222"][..],
            "--jetstream-stream <NAME>",
        ),
        (&["--jetstream-stream", "EVENTS"], "--jetstream <URL>"),
        (
            &[
                "--jetstream",
                "127.0.0.1:4222",
                "--jetstream-stream",
                "EVENTS",
            ],
            "--jetstream '127.0.0.1:4222' is not a NATS URL",
        ),
        (
            &[
                "--jetstream",
                "nats://127.0.0.1:4222",
                "--jetstream-stream",
                "my.events",
            ],
            "--jetstream-stream 'my.events' is not a valid JetStream name",
        ),
    ] {
        let (accepted, err) = run_refused(&[&queue[..], extra].concat());
        assert!(!accepted, "{extra:?} was accepted");
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

/// `--ready-file PATH` (here after the subcommand: the flag is global):
/// once every route serves, PATH names the process, the admin endpoint's
/// and the route's bound addresses (both asked for on port 0), and the
/// reloads handled; those addresses work; a SIGHUP is counted once handled.
#[test]
fn the_ready_file_names_working_addresses_and_counts_reloads() {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    // An upstream that echoes one connection back, prefixed.
    let up = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
    let up_addr = up.local_addr().expect("addr");
    let echo = std::thread::spawn(move || {
        let (mut s, _) = up.accept().expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read");
        s.write_all(b"echo:").expect("write");
        s.write_all(&got).expect("write");
    });
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = common::write_config(
        tmp.path(),
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nname = \"web\"\nmode = \"stream\"\n\
             listen = \"127.0.0.1:0\"\nupstreams = [\"{up_addr}\"]\n"
        ),
    );
    let ready = tmp.path().join("ready.json");
    let log = tmp.path().join("relay.log");
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Killed(
        Command::new(bin())
            .args(["run", "--config", config.to_str().expect("utf8")])
            .arg("--ready-file")
            .arg(&ready)
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("spawn spillway"),
    );
    let child_pid = u64::from(child.0.id());
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    // The ready file as it is once `done` accepts it (bounded).
    let mut wait_doc = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                let doc: serde_json::Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("ready file is not JSON ({e}): {text}"));
                if done(&doc) {
                    return doc;
                }
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!("spillway exited ({status}) before {what}:\n{}", log_text());
            }
            assert!(Instant::now() < deadline, "not {what}:\n{}", log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let doc = wait_doc("ready", &|_| true);
    let addr = |v: &serde_json::Value| -> SocketAddr {
        v.as_str()
            .unwrap_or_else(|| panic!("not an address: {v}"))
            .parse()
            .expect("address")
    };
    assert_eq!(doc["reloads"], 0, "{doc}");
    let pid = doc["pid"].as_u64().expect("pid");
    assert_eq!(pid, child_pid, "{doc}");
    let admin = addr(&doc["admin"]);
    let client = addr(&doc["routes"]["web"]["client"]);
    assert_eq!(doc["routes"].as_object().map(|r| r.len()), Some(1), "{doc}");
    assert!(admin.port() != 0 && client.port() != 0, "{doc}");

    // The client address reaches the upstream, the admin address answers.
    let mut c = TcpStream::connect(client).expect("connect the route");
    c.write_all(b"through").expect("write");
    c.shutdown(Shutdown::Write).expect("half-close");
    let mut back = Vec::new();
    c.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    c.read_to_end(&mut back).expect("read");
    assert_eq!(back, b"echo:through");
    echo.join().expect("upstream");
    let (code, body) = common::http_get(admin, "/readyz");
    assert_eq!(code, 200, "{body}");

    // A reload (nothing changed) is counted once handled; the addresses stay.
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());
    let doc = wait_doc("done with the reload", &|d| d["reloads"] == 1);
    assert_eq!(addr(&doc["admin"]), admin, "{doc}");
    assert_eq!(addr(&doc["routes"]["web"]["client"]), client, "{doc}");
    assert_eq!(doc["pid"], pid, "{doc}");
}

/// A ready file that cannot be written stops the start with a clear error
/// (a supervisor would otherwise wait for it forever); a clean stop removes
/// the file, whose addresses are no longer served.
#[test]
fn an_unwritable_ready_file_is_a_start_error_and_a_stop_removes_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for bad in [
        dir.path().to_path_buf(),
        dir.path().join("missing/ready.json"),
    ] {
        let out = Command::new(bin())
            .arg("--ready-file")
            .arg(&bad)
            .args(["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"])
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("--ready-file") && err.contains("cannot write it"),
            "{err}"
        );
    }
    let file = dir.path().join("ready.json");
    let mut child = Command::new(bin())
        .arg("--ready-file")
        .arg(&file)
        .args(["relay", "--listen", "127.0.0.1:0", "--to", "127.0.0.1:9"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "no ready file");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(term.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(!file.exists(), "the ready file outlived the relay");
    assert!(!dir.path().join("ready.json.tmp").exists());
}
