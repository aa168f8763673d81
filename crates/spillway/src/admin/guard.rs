//! An admin connection's socket with progress timers: a write that cannot
//! make progress for `stall` (the client stopped reading, e.g. it pipelines
//! requests and never reads the answers), or a read that waits longer than
//! `idle` (a kept-alive connection nobody uses), fails with `TimedOut`, and
//! hyper drops the connection. hyper's own header timeout does not cover a
//! blocked write.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{sleep, Sleep};

pub(super) struct Guarded {
    inner: TcpStream,
    stall: Duration,
    idle: Duration,
    /// Armed while a write is pending.
    write_timer: Option<Pin<Box<Sleep>>>,
    /// Armed while a read is pending.
    read_timer: Option<Pin<Box<Sleep>>>,
}

impl Guarded {
    pub(super) fn new(inner: TcpStream, stall: Duration, idle: Duration) -> Self {
        Guarded {
            inner,
            stall,
            idle,
            write_timer: None,
            read_timer: None,
        }
    }
}

/// While `pending`, arms `timer` (for `after`) and reports its expiry as
/// an error; once the operation completes, disarms it.
fn watch<T>(
    r: Poll<io::Result<T>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    after: Duration,
    cx: &mut Context<'_>,
    what: &'static str,
) -> Poll<io::Result<T>> {
    match r {
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(sleep(after)));
            if t.as_mut().poll(cx).is_ready() {
                *timer = None;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, what)));
            }
            Poll::Pending
        }
        ready => {
            *timer = None;
            ready
        }
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        watch(r, &mut this.read_timer, this.idle, cx, "admin client idle")
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        watch(
            r,
            &mut this.write_timer,
            this.stall,
            cx,
            "admin client not reading",
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        watch(
            r,
            &mut this.write_timer,
            this.stall,
            cx,
            "admin client not reading",
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        watch(
            r,
            &mut this.write_timer,
            this.stall,
            cx,
            "admin client not reading",
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
