//! Connection policies and socket helpers for spillway.
//!
//! Policies (backoff, balancing, health) are pure state machines over `now`
//! and events: they decide, the caller does the I/O. That keeps them testable
//! with a paused clock and free of hidden sleeps.

pub mod backoff;
