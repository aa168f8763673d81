//! Prints what a relay's consumer endpoint (a route with
//! `to_protocol = "ack"`) delivers, one line per message, and acknowledges
//! each once it is printed.
//!
//! ```text
//! cargo run -p spillway-client --example consume -- 127.0.0.1:7001
//! cargo run -p spillway-client --example consume -- 127.0.0.1:7001 100000   # then stop
//! ```
//!
//! A body that is not UTF-8 is refused for good (TERM: dead-lettered).
//! The stream ends when the relay drains (BYE) and everything is acked.

use std::io::Write;
use std::time::Instant;

use spillway_client::{Consumer, ConsumerOptions};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().ok_or("usage: consume ADDR [COUNT]")?;
    let count: Option<u64> = args.next().map(|n| n.parse()).transpose()?;
    let mut consumer = Consumer::connect(addr.as_str(), ConsumerOptions::default()).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let started = Instant::now();
    let mut n = 0u64;
    while let Some(message) = consumer.recv().await {
        let message = message?;
        match std::str::from_utf8(&message.body) {
            Ok(text) => {
                writeln!(out, "{} {} {text}", message.seq, message.attempt)?;
                message.ack()?;
            }
            Err(_) => message.term("not UTF-8")?,
        }
        n += 1;
        if count == Some(n) {
            break;
        }
    }
    out.flush()?;
    consumer.close().await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{n} messages in {secs:.2}s ({:.0}/s)", n as f64 / secs);
    Ok(())
}
