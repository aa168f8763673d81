//! A tokio client for spillway's ack protocol (`docs/protocol.md`):
//! consumers that acknowledge what they are done with, and producers that
//! wait for the relay's confirms.
//!
//! All wire work is `spillway_codec::proto`'s (the handshake, both
//! encodings, every frame); this crate adds the connections. Each
//! connection is driven by a background task that owns the socket, so
//! acknowledging a message, or sending one, is a cheap message to that
//! task from whichever task holds it.
//!
//! ```no_run
//! use std::time::Duration;
//! use spillway_client::{Consumer, ConsumerOptions, Producer, ProducerOptions};
//!
//! # async fn run() -> Result<(), spillway_client::ClientError> {
//! let producer = Producer::connect("127.0.0.1:7000", ProducerOptions::default()).await?;
//! producer.send("hello").await?;
//! producer.flush().await?; // confirmed: durable on the relay
//!
//! let mut consumer = Consumer::connect("127.0.0.1:7001", ConsumerOptions::default()).await?;
//! while let Some(message) = consumer.recv().await {
//!     let message = message?;
//!     match std::str::from_utf8(&message.body) {
//!         Ok(text) => { println!("{text}"); message.ack()? }
//!         Err(_) => message.term("not UTF-8")?,
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery is at least once: a message is delivered again (attempt
//! raised) if this consumer gives it back ([`Message::nak`], or drops it),
//! or if its connection is lost, times out or is closed while it is held.
//! A named producer ([`ProducerOptions::name`]) that reconnects and resends
//! does not enqueue a message twice.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod acks;
mod backoff;
mod conn;
mod consumer;
mod error;
mod producer;

pub use consumer::{Consumer, ConsumerOptions, Message};
pub use error::ClientError;
pub use producer::{Producer, ProducerOptions, MAX_UNCONFIRMED, MAX_UNCONFIRMED_BYTES};
pub use spillway_codec::proto::{Encoding, Welcome};

/// `futures_core::Stream`, which [`Consumer`] implements.
pub use futures_core::Stream;
