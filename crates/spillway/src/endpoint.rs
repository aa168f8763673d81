//! Addresses as the config and the command line write them: `HOST:PORT`
//! ([`check_host_port`]), and `listen:HOST:PORT` or `connect:HOST:PORT`
//! ([`Endpoint`]): which side opens the TCP connection at either end of a
//! queue route.

use std::fmt;
use std::str::FromStr;

/// `HOST:PORT` with a numeric port; IPv6 hosts in brackets.
pub fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("'{s}' is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("'{s}' has no host"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("'{s}' has an invalid port '{port}'"))?;
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Peers connect to spillway.
    Listen(String),
    /// spillway dials the peer, and redials with backoff.
    Connect(String),
}

impl Endpoint {
    pub fn addr(&self) -> &str {
        match self {
            Endpoint::Listen(a) | Endpoint::Connect(a) => a,
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, addr) = s.split_once(':').ok_or_else(|| {
            format!("invalid endpoint '{s}': expected listen:HOST:PORT or connect:HOST:PORT")
        })?;
        check_host_port(addr).map_err(|e| format!("invalid endpoint '{s}': {e}"))?;
        match kind {
            "listen" => Ok(Endpoint::Listen(addr.to_string())),
            "connect" => Ok(Endpoint::Connect(addr.to_string())),
            other => Err(format!(
                "invalid endpoint '{s}': '{other}' is neither listen nor connect"
            )),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Listen(a) => write!(f, "listen:{a}"),
            Endpoint::Connect(a) => write!(f, "connect:{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "listen:127.0.0.1:7000".parse(),
            Ok(Endpoint::Listen("127.0.0.1:7000".into()))
        );
        assert_eq!(
            "connect:[::1]:9".parse(),
            Ok(Endpoint::Connect("[::1]:9".into()))
        );
        assert!("dial:a:1".parse::<Endpoint>().is_err());
        assert!("listen:nohost".parse::<Endpoint>().is_err());
        assert_eq!(
            "connect:h:1".parse::<Endpoint>().map(|e| e.to_string()),
            Ok("connect:h:1".into())
        );
    }
}
