//! A hasher for sequence numbers used as map keys.

/// Hashes a sequence number (a `u64` key the relay chose, not a peer): one
/// multiplication (Fibonacci hashing), where SipHash cost 4% of the
/// relay's CPU per acknowledged message.
#[derive(Default)]
pub(super) struct SeqHasher(u64);

impl std::hash::Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Builds [`SeqHasher`]s.
pub(super) type SeqBuild = std::hash::BuildHasherDefault<SeqHasher>;
