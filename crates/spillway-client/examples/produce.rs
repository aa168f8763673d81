//! Sends lines to a relay's producer endpoint (a route with
//! `from_protocol = "ack"`) and waits for their confirms.
//!
//! ```text
//! cargo run -p spillway-client --example produce -- 127.0.0.1:7000 < lines.txt
//! cargo run -p spillway-client --example produce -- 127.0.0.1:7000 100000   # generated
//! ```
//!
//! With `SPILLWAY_PRODUCER_NAME=app-1` in the environment it is a named
//! producer: after a lost connection it reconnects and resends what was not
//! confirmed, and the relay keeps each message once.

use std::io::BufRead;
use std::time::Instant;

use spillway_client::{ClientError, Producer, ProducerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .ok_or("usage: produce ADDR [COUNT] (lines from stdin without COUNT)")?;
    let count: Option<u64> = args.next().map(|n| n.parse()).transpose()?;
    let options = ProducerOptions {
        name: std::env::var("SPILLWAY_PRODUCER_NAME").ok(),
        ..ProducerOptions::default()
    };
    let producer = Producer::connect(addr.as_str(), options).await?;
    let started = Instant::now();
    let mut sent = 0u64;
    match count {
        Some(n) => {
            for i in 0..n {
                send(&producer, format!("message {i}")).await?;
                sent += 1;
            }
        }
        None => {
            for line in std::io::stdin().lock().lines() {
                send(&producer, line?).await?;
                sent += 1;
            }
        }
    }
    while let Err(e) = producer.flush().await {
        if !e.is_retryable() {
            return Err(e.into());
        }
        eprintln!("flush: {e}; reconnecting");
        producer.reconnect().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{sent} messages confirmed in {secs:.2}s ({:.0}/s), {} resends recognised",
        sent as f64 / secs,
        producer.duplicates()
    );
    Ok(())
}

/// Sends `body`, reconnecting (and so resending what is unconfirmed) as
/// long as the error is worth a retry.
async fn send(producer: &Producer, body: String) -> Result<(), ClientError> {
    loop {
        match producer.send(body.clone()).await {
            Err(e) if e.is_retryable() => {
                eprintln!("send: {e}; reconnecting");
                producer.reconnect().await?;
            }
            other => return other,
        }
    }
}
