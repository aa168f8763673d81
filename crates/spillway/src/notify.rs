//! systemd readiness notifications (`sd_notify(3)`), for `Type=notify`
//! units: `READY=1` once every route is serving, `RELOADING=1` and
//! `READY=1` around a reload, `STOPPING=1` at shutdown. Without
//! `NOTIFY_SOCKET` in the environment (not started by systemd) each call is
//! a no-op. The protocol is one datagram to a Unix socket, so no library.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

pub fn ready() {
    send("READY=1\nSTATUS=serving");
}

pub fn reloading() {
    let now = spillway_net::sys::monotonic_usec();
    send(&format!(
        "RELOADING=1\nMONOTONIC_USEC={now}\nSTATUS=reloading"
    ));
}

pub fn stopping() {
    send("STOPPING=1\nSTATUS=draining");
}

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send_to(&path, msg) {
        // systemd would time the unit out; nothing else to do from here.
        debug!(error = %e, "sd_notify failed");
    }
}

fn send_to(path: &std::ffi::OsStr, msg: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_bytes();
    let addr = match bytes.split_first() {
        // "@name": a socket in the abstract namespace.
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        _ => SocketAddr::from_pathname(path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(msg.as_bytes(), &addr)?;
    Ok(())
}
