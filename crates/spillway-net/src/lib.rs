//! Connection policies and socket helpers for spillway.
//!
//! Policies (backoff, balancing, health) are pure state machines over `now`
//! and events: they decide, the caller does the I/O. That keeps them testable
//! with a paused clock and free of hidden sleeps. The only `unsafe` code in
//! the crate is in [`sys`], one syscall per block.

pub mod backoff;
pub mod balance;
pub mod dial;
pub mod sys;
pub mod tls;
