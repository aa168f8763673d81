//! The handshake: the client's `SPILLWAY 1 key=value...` line, and the
//! relay's `OK 1 key=value...` or `ERR <code> <text>` answer.
//!
//! Both are one ASCII line of at most [`MAX_LINE`](super::MAX_LINE) bytes, `\n` included;
//! [`hello_line`] finds it. A `\r` before the `\n` is tolerated (a client
//! typing in a terminal sends one); fields are separated by single spaces.

use super::error::{shown, ProtoError};
use super::frame::Frame;
use super::{
    decimal, text, Encoding, Role, DEFAULT_WINDOW, DEFAULT_WINDOW_BYTES, MAX_LINE, MAX_NAME,
    MAX_WINDOW, VERSION,
};

/// The length of the first line of `buf`, its `\n` included: `Ok(Some(n))`
/// when it is complete, `Ok(None)` when more bytes are needed, a 400 when
/// no `\n` is within the first [`MAX_LINE`](super::MAX_LINE) bytes.
///
/// For the client's handshake and for the relay's reply alike. The caller
/// takes the `n` bytes off its buffer, parses them ([`Hello::parse`],
/// [`Reply::parse`]) and decodes what follows with a
/// [`FrameDecoder`](super::FrameDecoder) of the chosen encoding: the bytes
/// after the line may already be frames.
pub fn hello_line(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    text::line_end(buf, &mut 0, MAX_LINE)
}

/// Strips the line's `\n` if present, then a `\r` if present.
fn trim_line(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `value` is a valid producer name, group or session: 1 to
/// [`MAX_NAME`] bytes of `[A-Za-z0-9._-]`.
pub fn is_valid_name(value: &[u8]) -> bool {
    (1..=MAX_NAME).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The client's handshake.
///
/// Options of the other role keep their defaults: a producer's `window` is
/// [`DEFAULT_WINDOW`] and means nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The protocol version; [`Hello::parse`] accepts only [`VERSION`].
    pub version: u32,
    /// `role=`: consumer or producer (required).
    pub role: Role,
    /// `encoding=`: text or binary (required).
    pub encoding: Encoding,
    /// `group=` (consumers): a group declared in the config; `None` is the
    /// default group.
    pub group: Option<String>,
    /// `window=` (consumers): messages delivered and unacknowledged, 1 to
    /// [`MAX_WINDOW`]; default [`DEFAULT_WINDOW`].
    pub window: u32,
    /// `window_bytes=` (consumers): body bytes delivered and unacknowledged,
    /// at least 1; default [`DEFAULT_WINDOW_BYTES`]. One message is always
    /// allowed, whatever its size.
    pub window_bytes: u64,
    /// `confirms=` (producers): `on` (default) or `off`.
    pub confirms: bool,
    /// `name=` (producers): a producer name, for idempotent resends; its
    /// PUBs then carry a pseq.
    pub name: Option<String>,
}

/// The handshake's options, in the order [`Hello::to_line`] writes them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Role,
    Encoding,
    Group,
    Window,
    WindowBytes,
    Confirms,
    Name,
}

impl Key {
    const ALL: [Key; 7] = [
        Key::Role,
        Key::Encoding,
        Key::Group,
        Key::Window,
        Key::WindowBytes,
        Key::Confirms,
        Key::Name,
    ];

    fn name(self) -> &'static str {
        match self {
            Key::Role => "role",
            Key::Encoding => "encoding",
            Key::Group => "group",
            Key::Window => "window",
            Key::WindowBytes => "window_bytes",
            Key::Confirms => "confirms",
            Key::Name => "name",
        }
    }

    /// The role the option is for, `None` for both.
    fn only_for(self) -> Option<Role> {
        match self {
            Key::Role | Key::Encoding => None,
            Key::Group | Key::Window | Key::WindowBytes => Some(Role::Consumer),
            Key::Confirms | Key::Name => Some(Role::Producer),
        }
    }
}

/// A 400 "bad <option> '<value>' (expected <what>)".
fn bad(key: Key, value: &[u8], expected: &str) -> ProtoError {
    ProtoError::malformed(format!(
        "bad {} '{}' (expected {expected})",
        key.name(),
        shown(value)
    ))
}

fn name_value(key: Key, value: &[u8]) -> Result<String, ProtoError> {
    if !is_valid_name(value) {
        let expected = format!("1 to {MAX_NAME} bytes of A-Z a-z 0-9 . _ -");
        return Err(bad(key, value, &expected));
    }
    // Checked above: ASCII only.
    Ok(String::from_utf8_lossy(value).into_owned())
}

impl Hello {
    /// A consumer's handshake with the spec's defaults: the default group,
    /// a window of [`DEFAULT_WINDOW`] messages and [`DEFAULT_WINDOW_BYTES`].
    pub fn consumer(encoding: Encoding) -> Hello {
        Hello {
            version: VERSION,
            role: Role::Consumer,
            encoding,
            group: None,
            window: DEFAULT_WINDOW,
            window_bytes: DEFAULT_WINDOW_BYTES,
            confirms: true,
            name: None,
        }
    }

    /// A producer's handshake with the spec's defaults: confirms on, no
    /// name.
    pub fn producer(encoding: Encoding) -> Hello {
        Hello {
            role: Role::Producer,
            ..Hello::consumer(encoding)
        }
    }

    /// Parses a handshake line (with or without its `\n`; a `\r` before it
    /// is tolerated): `SPILLWAY <version> key=value ...`.
    ///
    /// The version is checked before the options, so a client of another
    /// version gets a 401, whatever options it sends. Then, as 400s naming
    /// the option: an unknown or duplicate option, a bad value (with the
    /// allowed values), a missing `role` or `encoding`, an option of the
    /// other role.
    pub fn parse(line: &[u8]) -> Result<Hello, ProtoError> {
        let line = trim_line(line);
        let mut fields = line.split(|&b| b == b' ');
        if fields.next() != Some(&b"SPILLWAY"[..]) {
            return Err(ProtoError::malformed(format!(
                "not a spillway handshake: '{}' (expected 'SPILLWAY {VERSION} role=... encoding=...')",
                shown(line)
            )));
        }
        let version = fields.next().unwrap_or_default();
        if version.is_empty() || !version.iter().all(u8::is_ascii_digit) {
            return Err(ProtoError::malformed(format!(
                "malformed version '{}' (expected 'SPILLWAY {VERSION} ...')",
                shown(version)
            )));
        }
        if decimal(version) != Some(VERSION.into()) {
            return Err(ProtoError::unsupported_version(version));
        }
        let mut hello = Hello::consumer(Encoding::Text);
        let mut seen = [false; Key::ALL.len()];
        let (mut role, mut encoding) = (None, None);
        for field in fields {
            if field.is_empty() {
                return Err(ProtoError::malformed(
                    "malformed handshake: an empty field (two spaces, or a space at the end)",
                ));
            }
            let Some(eq) = memchr::memchr(b'=', field) else {
                return Err(ProtoError::malformed(format!(
                    "malformed option '{}' (expected key=value)",
                    shown(field)
                )));
            };
            let (name, value) = (&field[..eq], &field[eq + 1..]);
            let Some(key) = Key::ALL.into_iter().find(|k| k.name().as_bytes() == name) else {
                return Err(ProtoError::malformed(format!(
                    "unknown option '{}'",
                    shown(name)
                )));
            };
            let seen = &mut seen[key as usize];
            if *seen {
                return Err(ProtoError::malformed(format!(
                    "duplicate option '{}'",
                    key.name()
                )));
            }
            *seen = true;
            match key {
                Key::Role => {
                    role = Some(match value {
                        b"consumer" => Role::Consumer,
                        b"producer" => Role::Producer,
                        _ => return Err(bad(key, value, "consumer or producer")),
                    })
                }
                Key::Encoding => {
                    encoding = Some(match value {
                        b"text" => Encoding::Text,
                        b"binary" => Encoding::Binary,
                        _ => return Err(bad(key, value, "text or binary")),
                    })
                }
                Key::Group => hello.group = Some(name_value(key, value)?),
                Key::Window => {
                    hello.window = match decimal(value) {
                        Some(n @ 1..) if n <= MAX_WINDOW.into() => n as u32,
                        _ => return Err(bad(key, value, &format!("1 to {MAX_WINDOW}"))),
                    }
                }
                Key::WindowBytes => {
                    hello.window_bytes = match decimal(value) {
                        Some(n @ 1..) => n,
                        _ => return Err(bad(key, value, &format!("1 to {}", u64::MAX))),
                    }
                }
                Key::Confirms => {
                    hello.confirms = match value {
                        b"on" => true,
                        b"off" => false,
                        _ => return Err(bad(key, value, "on or off")),
                    }
                }
                Key::Name => hello.name = Some(name_value(key, value)?),
            }
        }
        let Some(role) = role else {
            return Err(ProtoError::malformed(
                "missing option 'role' (consumer or producer)",
            ));
        };
        let Some(encoding) = encoding else {
            return Err(ProtoError::malformed(
                "missing option 'encoding' (text or binary)",
            ));
        };
        if let Some(key) = Key::ALL
            .into_iter()
            .find(|&k| seen[k as usize] && k.only_for().is_some_and(|r| r != role))
        {
            return Err(ProtoError::malformed(format!(
                "option '{}' is for {}s, not {}s",
                key.name(),
                role.other(),
                role
            )));
        }
        hello.role = role;
        hello.encoding = encoding;
        Ok(hello)
    }

    /// The handshake line a client sends, `\n` included: `role`,
    /// `encoding`, then every option of its role (`group` and `name` when
    /// set). [`Hello::parse`] of it gives `self` back when `self` is valid
    /// (names as [`is_valid_name`] says, the window in range) and its other
    /// role's options are the defaults.
    pub fn to_line(&self) -> String {
        let mut line = format!(
            "SPILLWAY {} role={} encoding={}",
            self.version, self.role, self.encoding
        );
        match self.role {
            Role::Consumer => {
                if let Some(group) = &self.group {
                    line.push_str(&format!(" group={group}"));
                }
                line.push_str(&format!(
                    " window={} window_bytes={}",
                    self.window, self.window_bytes
                ));
            }
            Role::Producer => {
                line.push_str(if self.confirms {
                    " confirms=on"
                } else {
                    " confirms=off"
                });
                if let Some(name) = &self.name {
                    line.push_str(&format!(" name={name}"));
                }
            }
        }
        line.push('\n');
        line
    }
}

/// The relay's acceptance of a handshake: `OK 1 session=... max_message=...
/// ack_timeout_ms=... max_deliveries=...`.
///
/// All four keys are always sent. A client ignores keys it does not know,
/// so the relay may add some without breaking older clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// `session=`: this connection's id, for logs on both sides (1 to
    /// [`MAX_NAME`] bytes of `[A-Za-z0-9._-]`).
    pub session: String,
    /// `max_message=`: the route's largest body, in bytes.
    pub max_message: u64,
    /// `ack_timeout_ms=`: how long a consumer may hold a message without
    /// ACK, NAK, TERM or PROG before the relay resets the connection.
    pub ack_timeout_ms: u64,
    /// `max_deliveries=`: the attempt after which a message is
    /// dead-lettered instead of redelivered.
    pub max_deliveries: u32,
}

impl Welcome {
    /// The `OK` line the relay sends, `\n` included.
    pub fn to_line(&self) -> String {
        format!(
            "OK {VERSION} session={} max_message={} ack_timeout_ms={} max_deliveries={}\n",
            self.session, self.max_message, self.ack_timeout_ms, self.max_deliveries
        )
    }

    /// Parses an `OK` line (with or without its `\n`; a `\r` before it is
    /// tolerated). Unknown keys are ignored; a missing, duplicate or bad
    /// known key is a 400, a version other than [`VERSION`] a 401.
    pub fn parse(line: &[u8]) -> Result<Welcome, ProtoError> {
        let line = trim_line(line);
        let mut fields = line.split(|&b| b == b' ');
        if fields.next() != Some(&b"OK"[..]) {
            return Err(ProtoError::malformed(format!(
                "not an OK line: '{}'",
                shown(line)
            )));
        }
        let version = fields.next().unwrap_or_default();
        if version.is_empty() || !version.iter().all(u8::is_ascii_digit) {
            return Err(ProtoError::malformed(format!(
                "malformed version '{}' in OK",
                shown(version)
            )));
        }
        if decimal(version) != Some(VERSION.into()) {
            return Err(ProtoError::unsupported_version(version));
        }
        const KEYS: [&str; 4] = ["session", "max_message", "ack_timeout_ms", "max_deliveries"];
        let mut values: [Option<&[u8]>; 4] = [None; 4];
        for field in fields {
            let Some(eq) = memchr::memchr(b'=', field).filter(|&eq| eq > 0) else {
                return Err(ProtoError::malformed(format!(
                    "malformed field '{}' in OK (expected key=value)",
                    shown(field)
                )));
            };
            let (name, value) = (&field[..eq], &field[eq + 1..]);
            // Unknown keys are the relay's additions: not an error.
            if let Some(i) = KEYS.iter().position(|k| k.as_bytes() == name) {
                if values[i].replace(value).is_some() {
                    return Err(ProtoError::malformed(format!(
                        "duplicate key '{}' in OK",
                        KEYS[i]
                    )));
                }
            }
        }
        let value = |i: usize| {
            values[i].ok_or_else(|| ProtoError::malformed(format!("OK line without '{}'", KEYS[i])))
        };
        let number = |i: usize, max: u64| {
            let raw = value(i)?;
            decimal(raw).filter(|&n| n <= max).ok_or_else(|| {
                ProtoError::malformed(format!(
                    "bad {} '{}' in OK (expected 0 to {max})",
                    KEYS[i],
                    shown(raw)
                ))
            })
        };
        let session = value(0)?;
        if !is_valid_name(session) {
            return Err(ProtoError::malformed(format!(
                "bad session '{}' in OK (expected 1 to {MAX_NAME} bytes of A-Z a-z 0-9 . _ -)",
                shown(session)
            )));
        }
        Ok(Welcome {
            session: String::from_utf8_lossy(session).into_owned(),
            max_message: number(1, u64::MAX)?,
            ack_timeout_ms: number(2, u64::MAX)?,
            max_deliveries: number(3, u32::MAX.into())? as u32,
        })
    }
}

/// The relay's answer to a handshake, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `OK 1 ...`: the chosen encoding starts after this line.
    Welcome(Welcome),
    /// `ERR <code> <text>`: refused; the relay closes.
    Refused(ProtoError),
}

impl Reply {
    /// Parses the relay's reply line (with or without its `\n`; a `\r`
    /// before it is tolerated). An `ERR` line is [`Reply::Refused`] (not an
    /// `Err`: the line itself was fine); an `Err` means the line is neither
    /// a valid `OK` nor a valid `ERR`.
    pub fn parse(line: &[u8]) -> Result<Reply, ProtoError> {
        let trimmed = trim_line(line);
        if trimmed == b"ERR" || trimmed.starts_with(b"ERR ") {
            return match text::whole_frame(trimmed)? {
                Some(Frame::Err { code, text }) => Ok(Reply::Refused(ProtoError::new(code, text))),
                _ => Err(ProtoError::malformed("malformed ERR line")),
            };
        }
        Welcome::parse(trimmed).map(Reply::Welcome)
    }

    /// The line, `\n` included: [`Welcome::to_line`] or
    /// [`ProtoError::to_line`].
    pub fn to_line(&self) -> String {
        match self {
            Reply::Welcome(w) => w.to_line(),
            Reply::Refused(e) => e.to_line(),
        }
    }
}
