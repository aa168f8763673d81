//! The options of a socket this test process holds, found by its peer's
//! address: an in-process relay's own end of a connection the test made.
//! Borrowing a descriptor by number needs `unsafe`; it is alone here.
#![allow(unsafe_code)]

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::time::Duration;

/// Keepalive on, keepalive idle and `TCP_USER_TIMEOUT` of the socket in
/// this process whose peer is `peer` (`None`: no such socket).
pub fn options_of_socket_to(peer: SocketAddr) -> Option<(bool, Duration, Option<Duration>)> {
    for e in std::fs::read_dir("/proc/self/fd").ok()? {
        let Ok(fd) = e.ok()?.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: the descriptor is only borrowed for these few calls. The
        // caller holds its end of the connection open, so the socket found
        // stays open meanwhile; other descriptors are only asked for their
        // peer, which fails harmlessly on what is not a socket.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let s = socket2::SockRef::from(&fd);
        if s.peer_addr().ok().and_then(|a| a.as_socket()) == Some(peer) {
            return Some((
                s.keepalive().ok()?,
                s.tcp_keepalive_time().ok()?,
                s.tcp_user_timeout().ok()?,
            ));
        }
    }
    None
}
