//! Human-readable sizes (`64MiB`) and durations (`250ms`), as used on the
//! command line and in the config file.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Wall-clock time since the Unix epoch (zero if the clock is set before
/// it): timestamps in metrics, `/status` and message ages.
pub fn since_epoch() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// The largest size accepted anywhere (1024 TiB): far above any real
/// limit, and low enough that sums of a few sizes cannot overflow `u64`.
pub const MAX_SIZE: u64 = 1 << 50;

/// The longest duration accepted anywhere (3650 days): deadlines computed
/// as `now + duration` stay far from the end of the clock.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// A number of bytes. Parses `4096`, `64KiB`, `1.5GiB`, `10MB` (decimal
/// units are powers of 1000, binary ones powers of 1024, `K`/`M`/`G`/`T`
/// alone are binary).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        if num.is_empty() {
            return Err(format!(
                "invalid size '{s}': expected a number with an optional unit, like 64MiB"
            ));
        }
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "k" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            other => {
                return Err(format!(
                    "invalid size '{s}': unknown unit '{other}' (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
                ))
            }
        };
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid size '{s}': '{num}' is not a number"))?;
        let bytes = value * mult as f64;
        if !bytes.is_finite() || bytes > MAX_SIZE as f64 {
            return Err(format!("invalid size '{s}': too large (at most 1024TiB)"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"64MiB\" or a number of bytes")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                if v > MAX_SIZE {
                    return Err(E::custom("size too large (at most 1024TiB)"));
                }
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written with its unit: `250ms`, `5s`, `2m`, `1h`, `100us`,
/// or compound `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("invalid duration '': expected a number with a unit, like 250ms or 5s".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(split);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        if num.is_empty() {
            return Err(format!(
                "invalid duration '{s}': expected a number before '{unit}'"
            ));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration '{s}': '{num}' is not a number"))?;
        let secs = match unit {
            "ns" => value / 1e9,
            "us" | "µs" => value / 1e6,
            "ms" => value / 1e3,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            "d" => value * 86400.0,
            "" => {
                return Err(format!(
                    "invalid duration '{s}': a unit is required (ns, us, ms, s, m, h, d)"
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration '{s}': unknown unit '{other}' (use ns, us, ms, s, m, h or d)"
                ))
            }
        };
        let too_long = || format!("invalid duration '{s}': too long (at most 3650d)");
        let part = Duration::try_from_secs_f64(secs).map_err(|_| too_long())?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX_DURATION)
            .ok_or_else(too_long)?;
        rest = next;
    }
    Ok(total)
}

/// A [`Duration`] that deserializes from a string with a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

/// In the largest unit that holds it exactly (`5s`, `10m`, `100ms`), so
/// that it parses back to the same duration.
impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        for (unit, per) in [
            ("d", 86_400_000_000_000u128),
            ("h", 3_600_000_000_000),
            ("m", 60_000_000_000),
            ("s", 1_000_000_000),
            ("ms", 1_000_000),
            ("us", 1_000),
        ] {
            if ns >= per && ns.is_multiple_of(per) {
                return write!(f, "{}{unit}", ns / per);
            }
        }
        write!(f, "{ns}ns")
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("4096".parse::<ByteSize>(), Ok(ByteSize(4096)));
        assert_eq!("64KiB".parse::<ByteSize>(), Ok(ByteSize(65536)));
        assert_eq!("1.5GiB".parse::<ByteSize>(), Ok(ByteSize(3 << 29)));
        assert_eq!("10MB".parse::<ByteSize>(), Ok(ByteSize(10_000_000)));
        assert_eq!("0".parse::<ByteSize>(), Ok(ByteSize(0)));
        assert!("12XB"
            .parse::<ByteSize>()
            .unwrap_err()
            .contains("unknown unit 'XB'"));
        assert!("MiB".parse::<ByteSize>().is_err());
        assert_eq!(ByteSize(64 << 20).to_string(), "64MiB");
        assert_eq!(ByteSize(1000).to_string(), "1000B");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert!(parse_duration("5")
            .unwrap_err()
            .contains("unit is required"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn durations_print_in_a_form_that_parses_back() {
        for (d, text) in [
            (Duration::from_secs(5), "5s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(600), "10m"),
            (Duration::from_secs(7200), "2h"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_millis(100), "100ms"),
            (Duration::from_nanos(1500), "1500ns"),
            (Duration::ZERO, "0ns"),
        ] {
            assert_eq!(HumanDuration(d).to_string(), text);
            assert_eq!(text.parse::<HumanDuration>(), Ok(HumanDuration(d)));
        }
    }

    #[test]
    fn huge_values_are_errors_not_panics() {
        for d in [
            "213503982334601d213503982334601d",
            "200000000000000d",
            "3651d",
            "99999999999999999999999999999999999999999999999999999999999h",
            "3000d3000d",
        ] {
            assert!(parse_duration(d).unwrap_err().contains("too long"), "{d}");
        }
        assert_eq!(parse_duration("3650d"), Ok(MAX_DURATION));
        for b in [
            "18446744073709551615",
            "2000TiB",
            "999999999999999999999999999999GiB",
        ] {
            assert!(
                b.parse::<ByteSize>().unwrap_err().contains("too large"),
                "{b}"
            );
        }
        assert_eq!("1024TiB".parse::<ByteSize>(), Ok(ByteSize(MAX_SIZE)));
    }
}
