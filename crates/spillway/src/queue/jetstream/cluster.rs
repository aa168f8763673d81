//! The relay's side of the cluster: one connection per route, the stream
//! and the durable consumer made if missing and checked if present. A
//! stream or consumer that exists with other settings is an error that
//! names every difference: the relay never changes what it did not make
//! (another relay, or an operator, may rely on it).

use std::time::Duration;

use anyhow::{anyhow, Context};
use async_nats::jetstream::context::{
    ConsumerInfoErrorKind, CreateStreamErrorKind, GetStreamErrorKind,
};
use async_nats::jetstream::stream::ConsumerCreateStrictErrorKind;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::{self, consumer, stream};

use crate::config::model::{JetStream, JetStreamAuth};
use tracing::warn;

/// Connects (in the background: the first connect is retried too, so a
/// route starts while the cluster is down) and returns the JetStream
/// context. Reconnects forever, with the client's backoff.
pub async fn connect(cfg: &JetStream, route: &str) -> anyhow::Result<jetstream::Context> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("spillway/{route}"))
        .connection_timeout(Duration::from_secs(5))
        .ping_interval(Duration::from_secs(10))
        .max_reconnects(None)
        .retry_on_initial_connect();
    opts = match &cfg.auth {
        JetStreamAuth::None => opts,
        JetStreamAuth::Credentials(p) => opts
            .credentials_file(p)
            .await
            .with_context(|| format!("jetstream credentials {}", p.display()))?,
        JetStreamAuth::UserPassword(u, p) => opts.user_and_password(u.clone(), p.clone()),
        JetStreamAuth::Token(t) => opts.token(t.clone()),
    };
    if let Some(ca) = &cfg.tls_ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(c), Some(k)) = (&cfg.tls_cert, &cfg.tls_key) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    let client = opts
        .connect(cfg.servers.clone())
        .await
        .context("jetstream connect")?;
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client))
}

/// The stream this route needs.
pub fn stream_config(cfg: &JetStream, max_disk: u64) -> stream::Config {
    stream::Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subject.clone()],
        // An acknowledged batch leaves the stream, as a delivered message
        // leaves the local spool; with groups, once every group's durable
        // acknowledged it.
        retention: if cfg.groups.is_empty() {
            stream::RetentionPolicy::WorkQueue
        } else {
            stream::RetentionPolicy::Interest
        },
        num_replicas: cfg.replicas,
        storage: stream::StorageType::File,
        // At the size bound a publish is refused (the batch stays in the
        // local spool, whose `when_full` applies); `Old` would drop
        // accepted batches silently.
        discard: stream::DiscardPolicy::New,
        max_bytes: if max_disk == 0 {
            -1
        } else {
            i64::try_from(max_disk).unwrap_or(i64::MAX)
        },
        duplicate_window: cfg.duplicate_window,
        ..Default::default()
    }
}

/// The durable pull consumer `name` of this route (every durable of a
/// route has the same settings).
pub fn consumer_config(cfg: &JetStream, name: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        // Never given up on: a batch is delivered until it is acknowledged.
        max_deliver: -1,
        filter_subject: cfg.subject.clone(),
        max_ack_pending: i64::try_from(cfg.max_pending).unwrap_or(i64::MAX),
        deliver_policy: consumer::DeliverPolicy::All,
        priority_policy: if cfg.pinned.is_some() {
            consumer::PriorityPolicy::PinnedClient
        } else {
            consumer::PriorityPolicy::None
        },
        priority_groups: if cfg.pinned.is_some() {
            vec![PIN_GROUP.to_string()]
        } else {
            Vec::new()
        },
        priority_timeout: cfg.pinned.unwrap_or_default(),
        ..Default::default()
    }
}

/// The priority group pinned relays pull in (`pinned = true`).
pub const PIN_GROUP: &str = "spillway";

/// What differs between an existing stream and what the route needs (the
/// fields the relay depends on; the server fills in the others).
pub fn stream_mismatch(have: &stream::Config, want: &stream::Config) -> Vec<String> {
    let mut d = Vec::new();
    if have.retention != want.retention {
        d.push(format!(
            "retention is {:?}, want {:?}{}",
            have.retention,
            want.retention,
            match want.retention {
                stream::RetentionPolicy::Interest => {
                    " (groups: a batch stays until every group's durable acknowledged it)"
                }
                _ => " (no groups: an acknowledged batch leaves; groups need Interest)",
            }
        ));
    }
    if have.num_replicas.max(1) != want.num_replicas {
        d.push(format!(
            "replicas is {}, want {}",
            have.num_replicas.max(1),
            want.num_replicas
        ));
    }
    if have.storage != want.storage {
        d.push(format!(
            "storage is {:?}, want {:?}",
            have.storage, want.storage
        ));
    }
    if !want.subjects.iter().all(|s| have.subjects.contains(s)) {
        d.push(format!(
            "subjects are {:?}, want them to include {:?}",
            have.subjects, want.subjects
        ));
    }
    if have.max_bytes > 0 && have.discard != stream::DiscardPolicy::New {
        d.push(format!(
            "discard is {:?} with max_bytes {}: accepted batches would be dropped at the bound; want New",
            have.discard, have.max_bytes
        ));
    }
    if have.duplicate_window < want.duplicate_window {
        d.push(format!(
            "duplicate_window is {:?}, want at least {:?}",
            have.duplicate_window, want.duplicate_window
        ));
    }
    if matches!(have.persist_mode, Some(stream::PersistenceMode::Async)) {
        d.push("persist_mode is async: a publish is acknowledged before it is stored".into());
    }
    d
}

/// What differs between an existing durable consumer and the route's.
pub fn consumer_mismatch(have: &consumer::Config, want: &consumer::pull::Config) -> Vec<String> {
    let mut d = Vec::new();
    if have.ack_policy != want.ack_policy {
        d.push(format!(
            "ack_policy is {:?}, want {:?}",
            have.ack_policy, want.ack_policy
        ));
    }
    if have.deliver_subject.is_some() {
        d.push("it is a push consumer, want a pull consumer".into());
    }
    let filters: Vec<&String> = if have.filter_subject.is_empty() {
        have.filter_subjects.iter().collect()
    } else {
        vec![&have.filter_subject]
    };
    if !filters.is_empty() && filters != [&want.filter_subject] {
        d.push(format!(
            "filter is {filters:?}, want {:?}",
            want.filter_subject
        ));
    }
    if have.max_deliver > 0 {
        d.push(format!(
            "max_deliver is {}: a batch would be dropped after that many deliveries; want unlimited (-1)",
            have.max_deliver
        ));
    }
    if have.ack_wait != want.ack_wait {
        d.push(format!(
            "ack_wait is {:?}, want {:?}",
            have.ack_wait, want.ack_wait
        ));
    }
    if have.priority_policy != want.priority_policy {
        d.push(format!(
            "priority_policy is {:?}, want {:?}{}",
            have.priority_policy,
            want.priority_policy,
            if want.priority_policy == consumer::PriorityPolicy::PinnedClient {
                " (pinned = true)"
            } else {
                " (pinned = true on this relay?)"
            }
        ));
    } else if want.priority_policy == consumer::PriorityPolicy::PinnedClient {
        if !have.priority_groups.iter().any(|g| g == PIN_GROUP) {
            d.push(format!(
                "priority_groups are {:?}, want them to include {PIN_GROUP:?}",
                have.priority_groups
            ));
        }
        if have.priority_timeout != want.priority_timeout {
            d.push(format!(
                "priority_timeout (pinned_ttl) is {:?}, want {:?}",
                have.priority_timeout, want.priority_timeout
            ));
        }
    }
    if have.max_ack_pending != want.max_ack_pending {
        d.push(format!(
            "max_ack_pending is {}, want {}",
            have.max_ack_pending, want.max_ack_pending
        ));
    }
    d
}

/// Why the stream or consumer cannot be used: a setup error (the route
/// stops) or the cluster not answering yet (retried).
#[derive(Debug)]
pub enum Setup {
    Mismatch(anyhow::Error),
    Unavailable(anyhow::Error),
}

/// A create the server refused: a setup error when no retry can help (the
/// subject belongs to another stream; a work-queue stream has another
/// consumer on it), else retried (a cluster that is not ready yet).
fn refused(code: Option<ErrorCode>, e: anyhow::Error) -> Setup {
    match code {
        Some(
            ErrorCode::STREAM_SUBJECT_OVERLAP
            | ErrorCode::CONSUMER_WQ_MULTIPLE_UNFILTERED
            | ErrorCode::CONSUMER_WQ_CONSUMER_NOT_UNIQUE
            | ErrorCode::CONSUMER_OVERLAPPING_SUBJECT_FILTERS,
        ) => Setup::Mismatch(e.context(
            "the stream or consumer cannot be made as this route needs it (another stream \
             has the subject, or another durable reads the work-queue stream: relays sharing \
             a stream use one consumer name, or groups)",
        )),
        _ => Setup::Unavailable(e),
    }
}

/// Makes or checks the stream and the durable consumer.
pub async fn ensure(
    js: &jetstream::Context,
    cfg: &JetStream,
    max_disk: u64,
) -> Result<consumer::PullConsumer, Setup> {
    let want = stream_config(cfg, max_disk);
    let stream = match js.get_stream(&cfg.stream).await {
        Ok(s) => s,
        Err(e)
            if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
        {
            match js.create_stream(want.clone()).await {
                Ok(s) => s,
                // Made by another relay meanwhile: checked below. If it is
                // not there, the create's own error says why.
                Err(create) => {
                    let code = match create.kind() {
                        CreateStreamErrorKind::JetStream(j) => Some(j.error_code()),
                        _ => None,
                    };
                    js.get_stream(&cfg.stream).await.map_err(|_| {
                        refused(
                            code,
                            anyhow!("cannot create stream {}: {create}", cfg.stream),
                        )
                    })?
                }
            }
        }
        Err(e) => return Err(Setup::Unavailable(anyhow!("stream {}: {e}", cfg.stream))),
    };
    let diff = stream_mismatch(&stream.cached_info().config, &want);
    if !diff.is_empty() {
        return Err(Setup::Mismatch(anyhow!(
            "stream {} exists with other settings: {}",
            cfg.stream,
            diff.join("; ")
        )));
    }
    // Every durable first: with groups, a batch published while a group's
    // durable is missing would not be kept for that group.
    for name in cfg.durables() {
        ensure_consumer(&stream, cfg, &name).await?;
    }
    if !cfg.groups.is_empty() {
        // Advice only: it never holds the route back.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), warn_unlisted_groups(&stream, cfg)).await;
    }
    let name = cfg.durable();
    stream
        .get_consumer(&name)
        .await
        .map_err(|e| Setup::Unavailable(anyhow!("consumer {name}: {e}")))
}

/// Says which durables of the stream look like another group of this
/// route (`<consumer>-...`) and are not in this relay's `groups`: a group
/// another relay lists, or one removed from the configs. Under Interest
/// retention the stream keeps every batch until each of them acknowledged
/// it, so one that no relay reads stops every group once the stream is
/// full. The relay never deletes a durable.
async fn warn_unlisted_groups(stream: &stream::Stream, cfg: &JetStream) {
    use futures_util::StreamExt;
    let prefix = format!("{}-", cfg.consumer);
    let ours = cfg.durables();
    let mut names = stream.consumer_names();
    let mut others = Vec::new();
    while let Some(Ok(n)) = names.next().await {
        if n.starts_with(&prefix) && !ours.contains(&n) {
            others.push(n);
        }
    }
    if !others.is_empty() {
        warn!(
            stream = %cfg.stream,
            durables = ?others,
            "the stream has group durables this relay's groups do not list; the stream keeps \
             every batch until each of them acknowledged it, so one no relay reads stops every \
             group once the stream is full: list it in every relay's groups, or remove it \
             (nats consumer rm {} NAME)",
            cfg.stream
        );
    }
}

/// Makes or checks the durable consumer `name` of `stream`.
async fn ensure_consumer(
    stream: &stream::Stream,
    cfg: &JetStream,
    name: &str,
) -> Result<(), Setup> {
    let unavailable =
        |e: &dyn std::fmt::Display| Setup::Unavailable(anyhow!("consumer {name}: {e}"));
    let want_c = consumer_config(cfg, name);
    let info = match stream.consumer_info(name).await {
        Ok(i) => i,
        Err(e)
            if matches!(e.kind(), ConsumerInfoErrorKind::NotFound)
                || matches!(e.kind(), ConsumerInfoErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
        {
            match stream.create_consumer_strict(want_c.clone()).await {
                Ok(mut c) => c.info().await.map_err(|e| unavailable(&e))?.clone(),
                // Made by another relay meanwhile: checked below. If it is
                // not there, the create's own error says why.
                Err(create) => {
                    let code = match create.kind() {
                        ConsumerCreateStrictErrorKind::JetStream(j) => Some(j.error_code()),
                        _ => None,
                    };
                    stream.consumer_info(name).await.map_err(|_| {
                        refused(
                            code,
                            anyhow!(
                                "cannot create consumer {name} of stream {}: {create}",
                                cfg.stream
                            ),
                        )
                    })?
                }
            }
        }
        Err(e) => return Err(unavailable(&e)),
    };
    let diff = consumer_mismatch(&info.config, &want_c);
    if !diff.is_empty() {
        return Err(Setup::Mismatch(anyhow!(
            "consumer {name} of stream {} exists with other settings: {}",
            cfg.stream,
            diff.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> JetStream {
        JetStream::new("q", vec!["nats://127.0.0.1:4222".into()], "Q")
    }

    /// What the server returns for a stream made from `stream_config`
    /// (with its defaults filled in) is no mismatch; each setting the
    /// relay depends on is named when it differs.
    #[test]
    fn each_stream_difference_is_named() {
        let want = stream_config(&cfg(), 0);
        let mut have = want.clone();
        have.num_replicas = 0; // the server's "default": 1
        let mut want1 = want.clone();
        want1.num_replicas = 1;
        assert!(stream_mismatch(&have, &want1).is_empty());
        assert!(stream_mismatch(&want, &want).is_empty());

        let mut have = want.clone();
        have.retention = stream::RetentionPolicy::Limits;
        have.num_replicas = 1;
        have.storage = stream::StorageType::Memory;
        have.subjects = vec!["other".into()];
        have.max_bytes = 1 << 20;
        have.discard = stream::DiscardPolicy::Old;
        have.duplicate_window = Duration::from_secs(60);
        have.persist_mode = Some(stream::PersistenceMode::Async);
        let d = stream_mismatch(&have, &want).join("; ");
        for says in [
            "retention is Limits, want WorkQueue",
            "replicas is 1, want 3",
            "storage is Memory, want File",
            "want them to include [\"spillway.q\"]",
            "discard is Old with max_bytes 1048576",
            "duplicate_window is 60s, want at least 1800s",
            "persist_mode is async",
        ] {
            assert!(d.contains(says), "{says:?} not in {d}");
        }
    }

    #[test]
    fn each_consumer_difference_is_named() {
        let want = consumer_config(&cfg(), "spillway-q");
        let have = consumer::IntoConsumerConfig::into_consumer_config(want.clone());
        assert!(consumer_mismatch(&have, &want).is_empty());

        let mut have = have;
        have.ack_policy = consumer::AckPolicy::All;
        have.deliver_subject = Some("push.here".into());
        have.filter_subject = "spillway.other".into();
        have.max_deliver = 5;
        have.ack_wait = Duration::from_secs(1);
        have.max_ack_pending = 1000;
        let d = consumer_mismatch(&have, &want).join("; ");
        for says in [
            "ack_policy is All, want Explicit",
            "a push consumer",
            "filter is [\"spillway.other\"], want \"spillway.q\"",
            "max_deliver is 5",
            "ack_wait is 1s, want 30s",
            "max_ack_pending is 1000, want 64",
        ] {
            assert!(d.contains(says), "{says:?} not in {d}");
        }
    }

    /// A pinned route wants the pinned-client policy, its group and its
    /// TTL; a plain route refuses a pinned durable (its pulls, without the
    /// group, would be refused by the server).
    #[test]
    fn the_pinned_policy_is_checked_both_ways() {
        let mut pinned = cfg();
        pinned.pinned = Some(Duration::from_secs(20));
        let want = consumer_config(&pinned, "spillway-q");
        let have = consumer::IntoConsumerConfig::into_consumer_config(want.clone());
        assert!(consumer_mismatch(&have, &want).is_empty());

        let plain = consumer::IntoConsumerConfig::into_consumer_config(consumer_config(
            &cfg(),
            "spillway-q",
        ));
        let d = consumer_mismatch(&plain, &want).join("; ");
        assert!(
            d.contains("priority_policy is None, want PinnedClient"),
            "{d}"
        );
        let d = consumer_mismatch(&have, &consumer_config(&cfg(), "spillway-q")).join("; ");
        assert!(
            d.contains("priority_policy is PinnedClient, want None"),
            "{d}"
        );

        let mut other = have.clone();
        other.priority_groups = vec!["theirs".into()];
        other.priority_timeout = Duration::from_secs(120);
        let d = consumer_mismatch(&other, &want).join("; ");
        for says in [
            "priority_groups are [\"theirs\"], want them to include \"spillway\"",
            "priority_timeout (pinned_ttl) is 120s, want 20s",
        ] {
            assert!(d.contains(says), "{says:?} not in {d}");
        }
    }
}
