//! Test helpers: the simulated disk (`spillway_spool::sim`), small configs
//! that force segment rollover, and message bodies.
#![allow(dead_code)]

use std::path::Path;

#[allow(unused_imports)]
pub use spillway_spool::sim::{Faults, SimFs};
use spillway_spool::{Durability, SpoolConfig, WhenFull};

/// A config with tiny segments so rollover and deletion happen in every test.
pub fn small_config(dir: &Path) -> SpoolConfig {
    let mut c = SpoolConfig::new(dir);
    c.segment_size = 4096;
    c.memory_limit = 0;
    c.durability = Durability::Always;
    c.when_full = WhenFull::Block;
    c.max_message = 64 * 1024;
    c
}

pub fn msg(seq_tag: u64, len: usize) -> Vec<u8> {
    let mut v = format!("m{seq_tag}:").into_bytes();
    while v.len() < len {
        v.push(b'a' + (v.len() % 26) as u8);
    }
    v.truncate(len.max(1));
    v
}

/// Whether a spare segment file (`next.*.seg.spare`) holds more than a
/// header: a roll that did not finish.
pub fn spare_with_records(dir: &Path) -> bool {
    ["next.0.seg.spare", "next.1.seg.spare"]
        .iter()
        .any(|n| std::fs::metadata(dir.join(n)).is_ok_and(|m| m.len() > 32))
}
