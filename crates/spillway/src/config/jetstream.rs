//! `[route.jetstream]` of a queue route → a [`JetStream`]: the defaults of
//! [`JetStream::new`] and the keys given, each checked at its position
//! with the checks the command line shares (in [`model`](super::model)).

use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::convert::{ConfigError, Source};
use super::defaults;
use super::model::{
    check_jetstream_batch_bytes, check_jetstream_count, check_jetstream_group,
    check_jetstream_groups, check_jetstream_name, check_jetstream_pinned_ttl,
    check_jetstream_server, check_jetstream_subject, check_jetstream_wait, validate_jetstream,
    JetStream, JetStreamAuth, JS_MAX_INFLIGHT_RANGE, JS_MAX_PENDING_RANGE, JS_REPLICAS_RANGE,
};
use super::raw::{RawJetStream, S};

/// The table of route `route`. `servers` and `stream` are required; the
/// rest default as [`JetStream::new`] says.
pub(super) fn jetstream(
    src: &Source<'_>,
    route: &str,
    raw: Spanned<RawJetStream>,
) -> Result<JetStream, ConfigError> {
    let table = raw.span();
    // Every key named: a new one must be placed (used or rejected) here.
    let RawJetStream {
        servers,
        stream,
        subject,
        replicas,
        consumer,
        credentials,
        user,
        password,
        token,
        tls_ca,
        tls_cert,
        tls_key,
        batch_bytes,
        max_inflight,
        ack_wait,
        max_pending,
        duplicate_window,
        ordered,
        pinned,
        pinned_ttl,
        groups,
        group,
    } = raw.into_inner();
    let missing = |key: &str| {
        src.error(
            table.clone(),
            format!("[route.jetstream] is missing required key '{key}'"),
        )
    };

    let servers = servers.ok_or_else(|| missing("servers"))?;
    if servers.get_ref().is_empty() {
        return Err(src.error(servers.span(), "servers must list at least one NATS server"));
    }
    for (i, s) in servers.get_ref().iter().enumerate() {
        check_jetstream_server(&format!("servers[{i}]"), s.get_ref())
            .map_err(|m| src.error(s.span(), m))?;
    }
    let stream = stream.ok_or_else(|| missing("stream"))?;
    check_jetstream_name("stream", stream.get_ref()).map_err(|m| src.error(stream.span(), m))?;
    let servers = servers
        .into_inner()
        .into_iter()
        .map(Spanned::into_inner)
        .collect();
    let mut js = JetStream::new(route, servers, stream.into_inner());

    if let Some(v) = subject {
        check_jetstream_subject("subject", v.get_ref()).map_err(|m| src.error(v.span(), m))?;
        js.subject = v.into_inner();
    }
    if let Some(v) = consumer {
        check_jetstream_name("consumer", v.get_ref()).map_err(|m| src.error(v.span(), m))?;
        js.consumer = v.into_inner();
    }
    for (v, slot, key, range) in [
        (&replicas, &mut js.replicas, "replicas", JS_REPLICAS_RANGE),
        (
            &max_inflight,
            &mut js.max_inflight,
            "max_inflight",
            JS_MAX_INFLIGHT_RANGE,
        ),
        (
            &max_pending,
            &mut js.max_pending,
            "max_pending",
            JS_MAX_PENDING_RANGE,
        ),
    ] {
        if let Some(v) = v {
            *slot = check_jetstream_count(key, *v.get_ref(), range)
                .map_err(|m| src.error(v.span(), m))?;
        }
    }
    if let Some(v) = &batch_bytes {
        let b = v.get_ref().bytes();
        check_jetstream_batch_bytes("batch_bytes", b).map_err(|m| src.error(v.span(), m))?;
        js.batch_bytes = b;
    }
    for (v, slot, key) in [
        (&ack_wait, &mut js.ack_wait, "ack_wait"),
        (
            &duplicate_window,
            &mut js.duplicate_window,
            "duplicate_window",
        ),
    ] {
        if let Some(v) = v {
            check_jetstream_wait(key, v.get_ref().0).map_err(|m| src.error(v.span(), m))?;
            *slot = v.get_ref().0;
        }
    }

    if let Some(v) = &ordered {
        js.ordered = *v.get_ref();
    }
    match (&pinned, &pinned_ttl) {
        (Some(p), _) if *p.get_ref() => {
            let ttl = pinned_ttl
                .as_ref()
                .map_or(defaults::JS_PINNED_TTL, |v| v.get_ref().0);
            if let Some(v) = &pinned_ttl {
                check_jetstream_pinned_ttl("pinned_ttl", ttl)
                    .map_err(|m| src.error(v.span(), m))?;
            }
            if let Some(o) = ordered.as_ref().filter(|o| !*o.get_ref()) {
                return Err(src.error(
                    o.span(),
                    "ordered = false cannot be combined with pinned = true (a pinned relay delivers in stream order)",
                ));
            }
            js.pinned = Some(ttl);
        }
        (_, Some(v)) => {
            return Err(src.error(v.span(), "pinned_ttl needs pinned = true"));
        }
        _ => {}
    }
    if let Some(v) = groups {
        check_jetstream_groups("groups", &js.consumer, v.get_ref())
            .map_err(|m| src.error(v.span(), m))?;
        js.groups = v.into_inner();
    }
    if let Some(v) = group {
        check_jetstream_group("group", v.get_ref(), &js.groups)
            .map_err(|m| src.error(v.span(), m))?;
        js.group = Some(v.into_inner());
    }
    js.auth = auth(src, credentials, user, password, token)?;

    match (&tls_cert, &tls_key) {
        (Some(v), None) => {
            return Err(src.error(
                v.span(),
                "tls_cert needs tls_key (a client certificate comes with its key)",
            ))
        }
        (None, Some(v)) => {
            return Err(src.error(
                v.span(),
                "tls_key needs tls_cert (a client key comes with its certificate)",
            ))
        }
        _ => {}
    }
    js.tls_ca = path(tls_ca);
    js.tls_cert = path(tls_cert);
    js.tls_key = path(tls_key);

    // Every key was checked above at its position; this only catches a
    // check added to the model and not here.
    validate_jetstream(&js).map_err(|m| src.error(table, m))?;
    Ok(js)
}

fn path(v: S<String>) -> Option<PathBuf> {
    v.map(|p| PathBuf::from(p.into_inner()))
}

/// At most one method: `credentials`, `user` with `password`, or `token`.
fn auth(
    src: &Source<'_>,
    credentials: S<String>,
    user: S<String>,
    password: S<String>,
    token: S<String>,
) -> Result<JetStreamAuth, ConfigError> {
    match (&user, &password) {
        (Some(v), None) => {
            return Err(src.error(
                v.span(),
                "user needs password (they come together; or use credentials or token)",
            ))
        }
        (None, Some(v)) => {
            return Err(src.error(
                v.span(),
                "password needs user (they come together; or use token)",
            ))
        }
        _ => {}
    }
    let user_password = [&user, &password]
        .into_iter()
        .flatten()
        .map(Spanned::span)
        .min_by_key(|s| s.start);
    let mut methods: Vec<(&str, Range<usize>)> = [
        ("credentials", credentials.as_ref().map(Spanned::span)),
        ("user/password", user_password),
        ("token", token.as_ref().map(Spanned::span)),
    ]
    .into_iter()
    .filter_map(|(name, span)| Some((name, span?)))
    .collect();
    // The error goes to the method written second.
    methods.sort_by_key(|(_, span)| span.start);
    if let [(first, _), (second, span), ..] = methods.as_slice() {
        return Err(src.error(
            span.clone(),
            format!(
                "{first} and {second} are two auth methods: use one (credentials, user/password or token)"
            ),
        ));
    }
    Ok(if let Some(c) = credentials {
        JetStreamAuth::Credentials(PathBuf::from(c.into_inner()))
    } else if let (Some(u), Some(p)) = (user, password) {
        JetStreamAuth::UserPassword(u.into_inner(), p.into_inner())
    } else if let Some(t) = token {
        JetStreamAuth::Token(t.into_inner())
    } else {
        JetStreamAuth::None
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use super::*;
    use crate::config::model::{validate_queue, JS_MAX_MESSAGE};
    use crate::config::{defaults, parse, Config, QueueRoute, Route};

    const BASE: &str = "[[route]]\nname = \"q\"\nmode = \"queue\"\nfrom = \"listen:127.0.0.1:1\"\nto = \"listen:127.0.0.1:2\"\nspool = \"/tmp/q\"\n";
    /// The smallest valid table, on lines 7 to 9.
    const TABLE: &str =
        "[route.jetstream]\nservers = [\"nats://127.0.0.1:4222\"]\nstream = \"events\"\n";

    fn p(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    fn queue(text: &str) -> QueueRoute {
        match p(text) {
            Ok(Config { routes, .. }) => match routes.into_iter().next() {
                Some(Route::Queue(q)) => q,
                _ => panic!("not a queue route"),
            },
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_key_lands_in_its_field() {
        let q = queue(&format!(
            r#"{BASE}[route.jetstream]
servers = ["nats://n1:4222", "tls://n2.example:4443", "nats://n3:4222/"]
stream = "EVENTS_v2"
subject = "acme.events.v2"
replicas = 5
consumer = "relay-1"
credentials = "/etc/spillway/nats.creds"
tls_ca = "/etc/ca.pem"
tls_cert = "/etc/c.pem"
tls_key = "/etc/k.pem"
batch_bytes = "64KiB"
max_inflight = 1024
ack_wait = "2m"
max_pending = 10000
duplicate_window = "1h"
ordered = false
groups = ["billing", "audit"]
group = "audit"
"#
        ));
        assert_eq!(
            q.jetstream,
            Some(JetStream {
                servers: vec![
                    "nats://n1:4222".into(),
                    "tls://n2.example:4443".into(),
                    "nats://n3:4222/".into()
                ],
                stream: "EVENTS_v2".into(),
                subject: "acme.events.v2".into(),
                replicas: 5,
                consumer: "relay-1".into(),
                auth: JetStreamAuth::Credentials("/etc/spillway/nats.creds".into()),
                tls_ca: Some("/etc/ca.pem".into()),
                tls_cert: Some("/etc/c.pem".into()),
                tls_key: Some("/etc/k.pem".into()),
                batch_bytes: 64 << 10,
                max_inflight: 1024,
                ack_wait: Duration::from_secs(120),
                max_pending: 10_000,
                duplicate_window: Duration::from_secs(3600),
                ordered: false,
                pinned: None,
                groups: vec!["billing".into(), "audit".into()],
                group: Some("audit".into()),
            })
        );
        let q = queue(&format!(
            "{BASE}{TABLE}pinned = true\npinned_ttl = \"45s\"\n"
        ));
        assert_eq!(
            q.jetstream.map(|js| js.pinned),
            Some(Some(Duration::from_secs(45)))
        );
        let q = queue(&format!("{BASE}{TABLE}pinned = true\n"));
        assert_eq!(
            q.jetstream.map(|js| js.pinned),
            Some(Some(defaults::JS_PINNED_TTL))
        );
        let q = queue(&format!("{BASE}{TABLE}pinned = false\n"));
        assert_eq!(q.jetstream.map(|js| js.pinned), Some(None));
        for (auth, want) in [
            (
                "user = \"u\"\npassword = \"p w\"\n",
                JetStreamAuth::UserPassword("u".into(), "p w".into()),
            ),
            ("token = \"t0k\"\n", JetStreamAuth::Token("t0k".into())),
        ] {
            let q = queue(&format!("{BASE}{TABLE}{auth}"));
            assert_eq!(q.jetstream.map(|js| js.auth), Some(want), "{auth}");
        }
        // An inline table is the same table.
        let q = queue(&format!(
            "{BASE}jetstream = {{ servers = [\"nats://127.0.0.1:4222\"], stream = \"events\" }}\n"
        ));
        assert!(q.jetstream.is_some());
    }

    #[test]
    fn defaults_follow_the_route_name() {
        let q = queue(&format!("{BASE}{TABLE}"));
        let js = q.jetstream.expect("jetstream");
        assert_eq!(
            js,
            JetStream::new("q", vec!["nats://127.0.0.1:4222".into()], "events")
        );
        assert_eq!(
            (js.subject.as_str(), js.consumer.as_str()),
            ("spillway.q", "spillway-q")
        );
        assert_eq!(js.replicas, defaults::JS_REPLICAS);
        assert_eq!(js.batch_bytes, defaults::JS_BATCH_BYTES);
        assert_eq!(js.auth, JetStreamAuth::None);
        assert_eq!(js.tls_ca, None);
        // The spool's 1 MiB default does not fit one JetStream message.
        assert_eq!(q.max_message, JS_MAX_MESSAGE);
        assert_eq!(JS_MAX_MESSAGE, (1 << 20) - (8 << 10));
        assert_eq!(queue(BASE).max_message, defaults::MAX_MESSAGE);
        assert_eq!(queue(BASE).jetstream, None);
        // The limits themselves are accepted.
        let q = queue(&format!(
            "{BASE}max_message = \"1016KiB\"\n{TABLE}batch_bytes = \"1020KiB\"\nreplicas = 1\nmax_inflight = 1\nmax_pending = 1\nack_wait = \"1s\"\nduplicate_window = \"1s\"\n"
        ));
        assert_eq!(q.max_message, 1016 << 10);
        assert_eq!(q.jetstream.map(|js| js.batch_bytes), Some(1020 << 10));
        queue(&format!("{BASE}{TABLE}batch_bytes = \"4KiB\"\n"));
    }

    /// Each refusal: the key's position (line:col of its value) and why.
    #[test]
    fn refusals_name_the_key_and_where() {
        for (extra, at, says) in [
            // Line 10 is the first after TABLE; columns are the value's.
            (
                "replicas = 0\n",
                (10, 12),
                "replicas must be between 1 and 5",
            ),
            (
                "replicas = 6\n",
                (10, 12),
                "replicas must be between 1 and 5",
            ),
            (
                "max_inflight = 0\n",
                (10, 16),
                "max_inflight must be between 1 and 1024",
            ),
            ("max_inflight = 1025\n", (10, 16), "between 1 and 1024"),
            (
                "max_pending = 10001\n",
                (10, 15),
                "max_pending must be between 1 and 10000",
            ),
            (
                "batch_bytes = \"1MiB\"\n",
                (10, 15),
                "batch_bytes must be between 4KiB and 1020KiB",
            ),
            (
                "batch_bytes = 4095\n",
                (10, 15),
                "batch_bytes must be between 4KiB",
            ),
            (
                "ack_wait = \"999ms\"\n",
                (10, 12),
                "ack_wait must be at least 1s",
            ),
            (
                "duplicate_window = \"0s\"\n",
                (10, 20),
                "duplicate_window must be at least 1s",
            ),
            (
                "pinned = true\npinned_ttl = \"11s\"\n",
                (11, 14),
                "pinned_ttl must be between 12s and 3600s",
            ),
            (
                "groups = [\"a\", \"a\"]\n",
                (10, 10),
                "groups: 'a' is listed twice",
            ),
            (
                "groups = [\"a.b\"]\n",
                (10, 10),
                "groups[0] 'a.b' is not a valid JetStream name",
            ),
            ("group = \"a\"\n", (10, 9), "group 'a' needs groups"),
            (
                "groups = [\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"]\n",
                (10, 10),
                "a group name is 1 to 64 bytes",
            ),
            (
                "groups = [\"a\"]\ngroup = \"b\"\n",
                (11, 9),
                "group 'b' is not one of groups [\"a\"]",
            ),
            (
                "pinned_ttl = \"20s\"\n",
                (10, 14),
                "pinned_ttl needs pinned = true",
            ),
            (
                "ordered = false\npinned = true\n",
                (10, 11),
                "ordered = false cannot be combined with pinned = true",
            ),
            ("subject = \"a..b\"\n", (10, 11), "a token is empty"),
            ("subject = \"a.b.\"\n", (10, 11), "a token is empty"),
            ("subject = \"\"\n", (10, 11), "a token is empty"),
            ("subject = \"a.*\"\n", (10, 11), "wildcard"),
            ("subject = \"a.>\"\n", (10, 11), "wildcard"),
            ("subject = \"a b\"\n", (10, 11), "whitespace"),
            (
                "consumer = \"a.b\"\n",
                (10, 12),
                "consumer 'a.b' is not a valid JetStream name",
            ),
            ("consumer = \"\"\n", (10, 12), "not a valid JetStream name"),
            ("user = \"u\"\n", (10, 8), "user needs password"),
            ("password = \"p\"\n", (10, 12), "password needs user"),
            (
                "credentials = \"/c\"\ntoken = \"t\"\n",
                (11, 9),
                "credentials and token are two auth methods",
            ),
            (
                "token = \"t\"\nuser = \"u\"\npassword = \"p\"\n",
                (11, 8),
                "token and user/password are two auth methods",
            ),
            ("tls_cert = \"/c\"\n", (10, 12), "tls_cert needs tls_key"),
            ("tls_key = \"/k\"\n", (10, 11), "tls_key needs tls_cert"),
            ("bogus = 1\n", (10, 1), "unknown field `bogus`"),
            ("replicas = \"3\"\n", (10, 12), "invalid type"),
        ] {
            let e = p(&format!("{BASE}{TABLE}{extra}")).expect_err(extra);
            assert_eq!((e.line, e.col), at, "{extra}: {e}");
            assert!(e.message.contains(says), "{extra}: {e}");
        }
        let long = "s".repeat(256);
        let e = p(&format!("{BASE}{}", TABLE.replace("events", &long))).expect_err("256");
        assert_eq!((e.line, e.col), (9, 10), "{e}");
        assert!(e.message.contains("1 to 255"), "{e}");
        queue(&format!("{BASE}{}", TABLE.replace("events", &long[..255])));
        for name in ["a b", "a.b", "a*", "a>", "a/b", "a\\\\b"] {
            let e = p(&format!("{BASE}{}", TABLE.replace("events", name))).expect_err(name);
            assert_eq!((e.line, e.col), (9, 10), "{e}");
            assert!(e.message.contains("not a valid JetStream name"), "{e}");
        }
    }

    #[test]
    fn servers_are_checked_one_by_one() {
        let servers = |list: &str| {
            let table = format!("[route.jetstream]\nservers = {list}\nstream = \"s\"\n");
            p(&format!("{BASE}{table}")).map(|_| ())
        };
        // Column 12 is the first entry, 29 the second.
        for (list, col, says) in [
            ("[]", 11, "at least one NATS server"),
            (
                "[\"nats://a:4222\", \"http://b:4222\"]",
                29,
                "servers[1] 'http://b:4222': scheme 'http://'",
            ),
            (
                "[\"nats://a:4222\", \"b:4222\"]",
                29,
                "servers[1] 'b:4222' is not a NATS URL",
            ),
            (
                "[\"nats://a\"]",
                12,
                "servers[0] 'nats://a' needs HOST:PORT",
            ),
            ("[\"nats://:4222\"]", 12, "has no host"),
            ("[\"nats://a:port\"]", 12, "invalid port"),
            ("[\"nats://a:4222/x\"]", 12, "no path"),
            ("[\"nats://a b:4222\"]", 12, "not a valid NATS URL"),
        ] {
            let e = servers(list).expect_err(list);
            assert_eq!((e.line, e.col), (8, col), "{list}: {e}");
            assert!(e.message.contains(says), "{list}: {e}");
        }
        // A password in the URL is refused and not repeated in the error.
        let e = servers("[\"nats://me:s3cret@a:4222\"]").expect_err("userinfo");
        assert!(e.message.contains("user or password"), "{e}");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        for ok in [
            "[\"nats://a:4222\", \"tls://[::1]:4222\"]",
            "[\"nats://a:4222/\"]",
        ] {
            servers(ok).expect(ok);
        }
        // The relay's client is built without WebSocket.
        for ws in ["[\"ws://a:80\"]", "[\"wss://a:443/path\"]"] {
            let e = servers(ws).expect_err(ws);
            assert!(e.message.contains("WebSocket"), "{e}");
        }
    }

    #[test]
    fn required_keys_and_the_route_around_the_table() {
        // `[route.jetstream]` is on line 7: a missing key is reported there.
        for (table, key) in [
            ("[route.jetstream]\nstream = \"s\"\n", "servers"),
            ("[route.jetstream]\nservers = [\"nats://a:1\"]\n", "stream"),
        ] {
            let e = p(&format!("{BASE}{table}")).expect_err(key);
            assert_eq!((e.line, e.col), (7, 1), "{e}");
            assert!(
                e.message.contains(&format!(
                    "[route.jetstream] is missing required key '{key}'"
                )),
                "{e}"
            );
        }
        let e = p(&format!("{BASE}max_message = \"1MiB\"\n{TABLE}")).expect_err("1MiB");
        assert_eq!((e.line, e.col), (7, 15), "{e}");
        assert!(
            e.message.contains("max_message must be at most 1016KiB"),
            "{e}"
        );
        assert!(e.message.contains("one JetStream message"), "{e}");
        let e = p(&format!(
            "{BASE}to_protocol = \"ack\"\ngroups = [\"billing\"]\n{TABLE}"
        ))
        .expect_err("groups");
        assert_eq!((e.line, e.col), (8, 10), "{e}");
        assert!(
            e.message.contains(
                "groups on a jetstream route are the stream's consumer groups: set groups (and group) in [route.jetstream]"
            ),
            "{e}"
        );
        // The ack protocol stays available on either side.
        let q = queue(&format!(
            "{BASE}from_protocol = \"ack\"\nto_protocol = \"ack\"\ngroups = []\n{TABLE}"
        ));
        assert!(q.jetstream.is_some());
    }

    /// The command line builds the model directly: `validate_queue` holds
    /// the same rules.
    #[test]
    fn validate_queue_refuses_what_the_file_refuses() {
        let mut q = queue(&format!("{BASE}{TABLE}"));
        validate_queue(&q).expect("valid");
        let valid = q.clone();
        q.groups = vec!["billing".into()];
        q.to_protocol = crate::config::Protocol::Ack;
        assert_eq!(
            validate_queue(&q),
            Err(crate::config::model::JS_NO_GROUPS.into())
        );
        let mut q = valid.clone();
        let js = q.jetstream.as_mut().expect("jetstream");
        js.groups = vec!["a".into()];
        js.group = Some("b".into());
        assert_eq!(
            validate_queue(&q),
            Err("group 'b' is not one of groups [\"a\"]".into())
        );
        let mut q = valid.clone();
        q.jetstream.as_mut().expect("jetstream").groups =
            (0..65).map(|i| format!("g{i}")).collect();
        assert_eq!(validate_queue(&q), Err("groups: at most 64 groups".into()));
        let mut q = valid.clone();
        q.max_message = 1 << 20;
        let e = validate_queue(&q).expect_err("1MiB");
        assert!(e.starts_with("max_message must be at most"), "{e}");
        let js = valid.jetstream.clone().expect("jetstream");
        for (change, says) in [
            (
                (|js: &mut JetStream| js.servers.clear()) as fn(&mut JetStream),
                "servers must list",
            ),
            (|js| js.servers.push("nats://a".into()), "servers[1]"),
            (|js| js.stream = "a.b".into(), "stream 'a.b'"),
            (|js| js.consumer = "a b".into(), "consumer 'a b'"),
            (|js| js.subject = "a.>".into(), "subject 'a.>'"),
            (|js| js.replicas = 0, "replicas"),
            (|js| js.max_inflight = 2000, "max_inflight"),
            (|js| js.max_pending = 0, "max_pending"),
            (|js| js.batch_bytes = 1 << 20, "batch_bytes"),
            (|js| js.ack_wait = Duration::ZERO, "ack_wait"),
            (
                |js| js.duplicate_window = Duration::from_millis(10),
                "duplicate_window",
            ),
            (|js| js.tls_key = Some("/k".into()), "tls_cert and tls_key"),
        ] {
            let mut q = valid.clone();
            let mut bad = js.clone();
            change(&mut bad);
            q.jetstream = Some(bad);
            let e = validate_queue(&q).expect_err(says);
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
