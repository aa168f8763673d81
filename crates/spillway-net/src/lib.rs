//! Connection policies and socket helpers for spillway.
//!
//! Policies (backoff, balancing, health thresholds, outlier ejection,
//! circuit breaking, connection limits, error classification) are pure
//! state machines over `now` and events: they decide, the caller does the
//! I/O. That keeps them testable with a paused clock and free of hidden
//! sleeps. The only `unsafe` code in
//! the crate is in [`sys`], one syscall per block.

pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod classify;
pub mod dial;
pub mod health;
pub mod limit;
pub mod outlier;
pub mod sys;
pub mod timeout;
pub mod tls;
