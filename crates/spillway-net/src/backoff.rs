//! Exponential backoff with full jitter (placeholder).
