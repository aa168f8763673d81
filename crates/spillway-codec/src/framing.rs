//! Framing names and their parsing.

use std::fmt;
use std::str::FromStr;

use crate::error::ParseFramingError;

/// How a byte stream is cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Framing {
    /// Newline-delimited; a message includes its trailing `'\n'`.
    Lines,
    /// A length prefix counting the payload bytes, followed by the payload.
    /// The message includes the prefix.
    Len(LenPrefix),
    /// No boundaries: whatever bytes are available become one message, up to
    /// the maximum message size.
    Raw,
}

/// The shape of a length prefix.
///
/// Valid widths are 1, 2, 4 and 8 bytes. For a 1-byte prefix the byte order
/// is meaningless: `len:u8` parses to `big_endian: true`, and both values of
/// `big_endian` display as `len:u8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LenPrefix {
    /// Prefix width in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// Byte order of the prefix (network order when `true`).
    pub big_endian: bool,
}

impl LenPrefix {
    /// `len:u8`
    pub const U8: LenPrefix = LenPrefix {
        width: 1,
        big_endian: true,
    };
    /// `len:u16be`
    pub const U16_BE: LenPrefix = LenPrefix {
        width: 2,
        big_endian: true,
    };
    /// `len:u16le`
    pub const U16_LE: LenPrefix = LenPrefix {
        width: 2,
        big_endian: false,
    };
    /// `len:u32be`, the default framing for binary protocols.
    pub const U32_BE: LenPrefix = LenPrefix {
        width: 4,
        big_endian: true,
    };
    /// `len:u32le`
    pub const U32_LE: LenPrefix = LenPrefix {
        width: 4,
        big_endian: false,
    };
    /// `len:u64be`
    pub const U64_BE: LenPrefix = LenPrefix {
        width: 8,
        big_endian: true,
    };
    /// `len:u64le`
    pub const U64_LE: LenPrefix = LenPrefix {
        width: 8,
        big_endian: false,
    };

    /// A prefix of `width` bytes, or `None` unless `width` is 1, 2, 4 or 8.
    pub const fn new(width: u8, big_endian: bool) -> Option<LenPrefix> {
        match width {
            1 | 2 | 4 | 8 => Some(LenPrefix { width, big_endian }),
            _ => None,
        }
    }

    /// Whether `width` is one of 1, 2, 4, 8.
    pub const fn is_valid(self) -> bool {
        matches!(self.width, 1 | 2 | 4 | 8)
    }

    /// The largest payload length the prefix can express.
    pub const fn max_payload(self) -> u64 {
        match self.width {
            1 => u8::MAX as u64,
            2 => u16::MAX as u64,
            4 => u32::MAX as u64,
            _ => u64::MAX,
        }
    }

    /// Reads the declared payload length from exactly `self.width` bytes.
    pub(crate) fn read(self, prefix: &[u8]) -> u64 {
        let mut len = 0u64;
        if self.big_endian {
            for &b in prefix {
                len = (len << 8) | u64::from(b);
            }
        } else {
            for &b in prefix.iter().rev() {
                len = (len << 8) | u64::from(b);
            }
        }
        len
    }

    /// Appends `len` as a prefix; the caller has checked `len <= max_payload()`.
    pub(crate) fn write(self, len: u64, out: &mut Vec<u8>) {
        let width = usize::from(self.width);
        if self.big_endian {
            out.extend_from_slice(&len.to_be_bytes()[8 - width..]);
        } else {
            out.extend_from_slice(&len.to_le_bytes()[..width]);
        }
    }
}

impl Framing {
    /// Every name [`Framing::from_str`] accepts.
    pub const NAMES: &'static [&'static str] = &[
        "lines",
        "raw",
        "len:u8",
        "len:u16be",
        "len:u16le",
        "len:u32be",
        "len:u32le",
        "len:u64be",
        "len:u64le",
    ];

    /// Bytes of framing a message carries besides its payload: the prefix
    /// width, 1 for the newline of `lines`, 0 for `raw`.
    pub const fn overhead(self) -> usize {
        match self {
            Framing::Lines => 1,
            Framing::Len(p) => p.width as usize,
            Framing::Raw => 0,
        }
    }
}

impl FromStr for Framing {
    type Err = ParseFramingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let framing = match s {
            "lines" => Framing::Lines,
            "raw" => Framing::Raw,
            "len:u8" => Framing::Len(LenPrefix::U8),
            "len:u16be" => Framing::Len(LenPrefix::U16_BE),
            "len:u16le" => Framing::Len(LenPrefix::U16_LE),
            "len:u32be" => Framing::Len(LenPrefix::U32_BE),
            "len:u32le" => Framing::Len(LenPrefix::U32_LE),
            "len:u64be" => Framing::Len(LenPrefix::U64_BE),
            "len:u64le" => Framing::Len(LenPrefix::U64_LE),
            _ => {
                return Err(ParseFramingError {
                    input: s.to_owned(),
                })
            }
        };
        Ok(framing)
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::Lines => f.write_str("lines"),
            Framing::Raw => f.write_str("raw"),
            Framing::Len(p) if p.width == 1 => f.write_str("len:u8"),
            Framing::Len(p) => write!(
                f,
                "len:u{}{}",
                u32::from(p.width) * 8,
                if p.big_endian { "be" } else { "le" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips() {
        for name in Framing::NAMES {
            let framing: Framing = name.parse().expect("listed name parses");
            assert_eq!(framing.to_string(), *name);
            assert_eq!(framing.to_string().parse::<Framing>(), Ok(framing));
        }
    }

    #[test]
    fn u8_displays_the_same_in_either_byte_order() {
        let le = Framing::Len(LenPrefix {
            width: 1,
            big_endian: false,
        });
        assert_eq!(le.to_string(), "len:u8");
    }

    #[test]
    fn unknown_name_lists_the_valid_ones() {
        let err = "len:u24be".parse::<Framing>().expect_err("not a framing");
        let msg = err.to_string();
        assert!(msg.contains("len:u24be"), "{msg}");
        for name in Framing::NAMES {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
        assert!("LINES".parse::<Framing>().is_err());
        assert!("".parse::<Framing>().is_err());
        assert!(" lines".parse::<Framing>().is_err());
    }

    #[test]
    fn prefix_read_write_round_trip() {
        for name in Framing::NAMES {
            let Ok(Framing::Len(p)) = name.parse::<Framing>() else {
                continue;
            };
            for len in [0, 1, 0x7f, 0xff, p.max_payload() / 3, p.max_payload()] {
                let mut out = Vec::new();
                p.write(len, &mut out);
                assert_eq!(out.len(), usize::from(p.width));
                assert_eq!(p.read(&out), len, "{name} {len}");
            }
        }
        let mut out = Vec::new();
        LenPrefix::U32_LE.write(0x0102_0304, &mut out);
        assert_eq!(out, [4, 3, 2, 1]);
        out.clear();
        LenPrefix::U32_BE.write(0x0102_0304, &mut out);
        assert_eq!(out, [1, 2, 3, 4]);
    }

    #[test]
    fn len_prefix_new_rejects_odd_widths() {
        assert_eq!(LenPrefix::new(4, true), Some(LenPrefix::U32_BE));
        for w in [0, 3, 5, 16] {
            assert_eq!(LenPrefix::new(w, true), None);
        }
    }
}
