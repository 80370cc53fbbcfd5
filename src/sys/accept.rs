//! Accepting TCP connections without being knocked over. A `Gate` holds
//! at most its cap of connections (it stops accepting while full, so the
//! kernel's backlog waits instead of descriptors running out), backs off
//! when the process or system is out of descriptors instead of spinning
//! (and says so once per episode), and hands out `Guarded` streams that
//! fail a read once the peer has been silent too long: first bytes within
//! the handshake timeout, then any bytes within the idle timeout. Once the
//! peer has spoken, bytes it takes from us count as well: a stream it
//! follows (a live status page) is not idle, a peer that stops reading is.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::metrics::{Count, Expose, Samples, Writer};

/// Longest pause between accepts while descriptors are exhausted.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a connection must have been silent before it is closed to
/// make room.
const EVICT_AFTER: Duration = Duration::from_millis(250);
/// How long a connection that has had no answer yet may be open before it
/// is closed to make room, and how often a full evicting gate looks again.
/// A client with a request sends it with its first packet; one still
/// without an answer by now is trickling its request in (or sent none).
const EVICT_UNANSWERED: Duration = Duration::from_millis(100);

/// What one listener counts.
#[derive(Debug, Default)]
pub struct GateCounters {
    pub accepted: Count,
    /// Times the listener was full and stopped accepting.
    pub full: Count,
    /// Accepts that failed for want of descriptors.
    pub exhausted: Count,
    /// Connections closed for silence.
    pub timed_out: Count,
    /// Silent connections closed to make room for a new one.
    pub evicted: Count,
    /// Connections closed because a request (a DNS message, an HTTP
    /// request header) did not arrive whole within its deadline.
    pub slow: Arc<Count>,
    /// Connections open now (a gauge kept as a count).
    pub open: Count,
}

/// A listener with a cap and timeouts.
pub struct Gate {
    listener: TcpListener,
    name: &'static str,
    slots: Arc<Semaphore>,
    cap: usize,
    handshake: Duration,
    idle: Duration,
    counters: Arc<GateCounters>,
    backoff: crate::backoff::Backoff,
    exhausted: bool,
    was_full: bool,
    /// For an evicting gate, its connections: when full, the one silent
    /// longest is closed to make room. Other gates track nothing.
    open: Option<Arc<Open>>,
}

/// The connections a gate holds, for eviction.
#[derive(Debug)]
struct Open {
    epoch: std::time::Instant,
    next: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<u64, Arc<Live>>>,
}

/// One open connection as its gate sees it.
#[derive(Debug, Default)]
struct Live {
    /// Milliseconds from the gate's epoch to the last bytes read, or
    /// written once the peer has spoken (a stream it follows is alive).
    last_heard: std::sync::atomic::AtomicU64,
    /// Milliseconds from the gate's epoch to the accept.
    accepted: u64,
    /// Bytes have gone out on it: it has had an answer.
    answered: AtomicBool,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Open {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

impl Gate {
    pub fn new(listener: TcpListener, name: &'static str, cap: usize, handshake: Duration, idle: Duration) -> Self {
        Self {
            listener,
            name,
            slots: Arc::new(Semaphore::new(cap.max(1))),
            cap: cap.max(1),
            handshake,
            idle,
            counters: Arc::default(),
            backoff: crate::backoff::Backoff::new(Duration::from_millis(10), MAX_BACKOFF),
            exhausted: false,
            was_full: false,
            open: None,
        }
    }

    /// When full, close a connection instead of making new ones wait: the
    /// oldest one without an answer yet (open at least `EVICT_UNANSWERED`),
    /// else the one silent longest (at least `EVICT_AFTER`, neither sending
    /// nor taking bytes). Idle or trickling clients must not keep out the
    /// ones with a query or a scrape, however many of them wait in the
    /// kernel's queue ahead of it.
    pub fn evicting(mut self) -> Self {
        self.open = Some(Arc::new(Open { epoch: std::time::Instant::now(), next: Default::default(), live: Mutex::default() }));
        self
    }

    /// Marks a connection for closing: the oldest still unanswered, or
    /// the one silent longest, if one has waited long enough.
    fn evict_idlest(&self, open: &Open) {
        let now = open.now_ms();
        let Ok(live) = open.live.lock() else { return };
        let candidates = || live.values().filter(|l| !l.evicted.load(Ordering::Relaxed));
        let unanswered = candidates()
            .filter(|l| !l.answered.load(Ordering::Relaxed))
            .min_by_key(|l| l.accepted)
            .filter(|l| now.saturating_sub(l.accepted) >= EVICT_UNANSWERED.as_millis() as u64);
        let idlest = || {
            candidates()
                .min_by_key(|l| l.last_heard.load(Ordering::Relaxed))
                .filter(|l| now.saturating_sub(l.last_heard.load(Ordering::Relaxed)) >= EVICT_AFTER.as_millis() as u64)
        };
        if let Some(l) = unanswered.or_else(idlest) {
            l.evicted.store(true, Ordering::Relaxed);
            self.counters.evicted.inc();
            if let Some(w) = l.waker.lock().ok().and_then(|mut w| w.take()) {
                w.wake();
            }
        }
    }

    /// A `/metrics` (and status page) listener under `limits`: evicting,
    /// so that connections trickling a request in cannot keep a scrape out.
    pub fn metrics(listener: TcpListener, limits: &Limits) -> Self {
        Self::new(listener, "metrics", limits.metrics_connections, limits.handshake_timeout, limits.metrics_idle).evicting()
    }

    /// A gRPC listener under `limits`.
    pub fn grpc(listener: TcpListener, limits: &Limits) -> Self {
        Self::new(listener, "grpc", limits.grpc_connections, limits.handshake_timeout, limits.grpc_idle)
    }

    pub fn counters(&self) -> Arc<GateCounters> {
        self.counters.clone()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, once there is room for it.
    pub async fn accept(&mut self) -> (Guarded<TcpStream>, SocketAddr) {
        loop {
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(p) => {
                    self.was_full = false;
                    p
                }
                Err(_) => {
                    if !self.was_full {
                        self.was_full = true;
                        self.counters.full.inc();
                        warn!(listener = self.name, cap = self.cap, "connection cap reached; new connections wait");
                    }
                    loop {
                        if let Some(open) = &self.open {
                            self.evict_idlest(open);
                        }
                        let wait = if self.open.is_some() { EVICT_UNANSWERED } else { Duration::MAX };
                        if let Ok(p) = tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
                            break p.expect("the semaphore is never closed");
                        }
                    }
                }
            };
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    if self.exhausted {
                        self.exhausted = false;
                        info!(listener = self.name, "descriptors available again; accepting");
                    }
                    self.backoff.reset();
                    self.counters.accepted.inc();
                    let _ = stream.set_nodelay(true);
                    let slot = Slot::new(permit, self.counters.clone(), self.open.as_ref());
                    let guarded = Guarded::new(stream, self.handshake, self.idle, slot);
                    return (guarded, peer);
                }
                Err(e) if out_of_descriptors(&e) => {
                    drop(permit);
                    self.counters.exhausted.inc();
                    if !self.exhausted {
                        self.exhausted = true;
                        warn!(listener = self.name, error = %e, "out of file descriptors; accepting more slowly until some are free");
                    }
                    tokio::time::sleep(self.backoff.next_pause()).await;
                }
                // A connection that died before it was accepted, or similar.
                Err(error) => debug!(listener = self.name, %error, "accept failed"),
            }
        }
    }
}

fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// A connection's place under its listener's cap; freed when it closes.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<GateCounters>,
    /// Under an evicting gate: what it sees of this connection.
    tracked: Option<Tracked>,
}

/// An open connection in its evicting gate's table; leaves it on drop.
#[derive(Debug)]
struct Tracked {
    open: Arc<Open>,
    id: u64,
    live: Arc<Live>,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, counters: Arc<GateCounters>, open: Option<&Arc<Open>>) -> Self {
        counters.open.add(1);
        let tracked = open.map(|open| {
            let id = open.next.fetch_add(1, Ordering::Relaxed);
            let now = open.now_ms();
            let live = Arc::new(Live { accepted: now, last_heard: now.into(), ..Live::default() });
            if let Ok(mut l) = open.live.lock() {
                l.insert(id, live.clone());
            }
            Tracked { open: open.clone(), id, live }
        });
        Self { _permit: permit, counters, tracked }
    }

    /// Bytes came in, or went out to a peer that has spoken.
    fn heard(&self) {
        if let Some(t) = &self.tracked {
            t.live.last_heard.store(t.open.now_ms(), Ordering::Relaxed);
        }
    }

    /// Bytes went out: the peer has had an answer.
    fn answered(&self) {
        if let Some(t) = &self.tracked {
            t.live.answered.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the gate wants this connection closed; if not, `cx` is
    /// woken when it does.
    fn evicted(&self, cx: &Context<'_>) -> bool {
        let Some(t) = &self.tracked else { return false };
        if t.live.evicted.load(Ordering::Relaxed) {
            return true;
        }
        if let Ok(mut w) = t.live.waker.lock()
            && !w.as_ref().is_some_and(|w| w.will_wake(cx.waker()))
        {
            *w = Some(cx.waker().clone());
        }
        // Evicted between the check and storing the waker: seen now.
        t.live.evicted.load(Ordering::Relaxed)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counters.open.sub(1);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Ok(mut l) = self.open.live.lock() {
            l.remove(&self.id);
        }
    }
}

/// A stream whose reads fail once the peer has been silent too long.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    slot: Slot,
    /// The peer has sent something: the handshake is behind us.
    heard: bool,
}

impl<S> Guarded<S> {
    fn new(inner: S, handshake: Duration, idle: Duration, slot: Slot) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep(handshake)), idle, slot, heard: false }
    }

    /// `n` bytes went out: after the handshake, the connection is alive.
    fn wrote(&mut self, n: usize) {
        if n > 0 {
            self.slot.answered();
        }
        if n > 0 && self.heard {
            let next = Instant::now() + self.idle;
            self.deadline.as_mut().reset(next);
            self.slot.heard();
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                    this.slot.heard();
                    this.heard = true;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.slot.evicted(cx) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "closed to make room for a new connection")))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.slot.counters.timed_out.inc();
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "connection silent too long")))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.wrote(n);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The gates of one role, for `/metrics`.
#[derive(Debug, Default)]
pub struct Gates(pub std::sync::Mutex<Vec<(&'static str, Arc<GateCounters>)>>);

impl Gates {
    pub fn add(&self, gate: &Gate) {
        if let Ok(mut g) = self.0.lock() {
            g.push((gate.name, gate.counters()));
        }
    }
}

impl Expose for Gates {
    fn expose(&self, w: &mut Writer<'_, '_>) -> std::fmt::Result {
        let gates = self.0.lock().map(|g| g.clone()).unwrap_or_default();
        let family = |f: fn(&GateCounters) -> &Count| -> Samples<'static, u64> {
            gates.iter().map(|(name, c)| (vec![("listener", (*name).into())], f(c).get())).collect()
        };
        w.gauges(
            "vnamed_connections_open",
            "TCP connections held now, by listener.",
            family(|c| &c.open).into_iter().map(|(l, v)| (l, v as i64)).collect(),
        )?;
        w.counters("vnamed_connections_accepted", "TCP connections accepted, by listener.", family(|c| &c.accepted))?;
        w.counters("vnamed_connections_timed_out", "TCP connections closed for silence, by listener.", family(|c| &c.timed_out))?;
        w.counters("vnamed_connections_evicted", "Silent connections closed to make room, by listener.", family(|c| &c.evicted))?;
        w.counters(
            "vnamed_connections_slow",
            "Connections closed because a request did not arrive whole in time, by listener.",
            family(|c| &c.slow),
        )?;
        w.counters("vnamed_listener_full", "Times a listener reached its connection cap.", family(|c| &c.full))?;
        w.counters("vnamed_accept_exhausted", "Accepts that failed for want of file descriptors.", family(|c| &c.exhausted))
    }
}

impl crate::metrics::Listener for Gate {
    type Io = Guarded<TcpStream>;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        Gate::accept(self).await
    }

    fn header_timeout(&self) -> Duration {
        self.handshake
    }

    fn slow(&self) -> Arc<Count> {
        self.counters.slow.clone()
    }
}

/// Descriptors kept for everything but connections: zone files, the
/// state store, UDP sockets, watches, outgoing calls.
const FD_RESERVE: u64 = 128;

/// The configured limits, the open-files limit raised to its hard limit
/// first and the connection caps lowered to fit it if they do not.
pub fn fitted(configured: &Limits) -> Limits {
    let mut limits = configured.clone();
    match raise_nofile() {
        Ok(nofile) => {
            if let Some(said) = limits.fit(nofile, FD_RESERVE) {
                warn!("{said}");
            }
        }
        Err(error) => warn!(%error, "cannot read or raise the open-files limit"),
    }
    limits
}

/// Raises the soft limit on open files to the hard limit; returns the limit now in force.
pub fn raise_nofile() -> io::Result<u64> {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(io::Error::last_os_error());
        }
        if l.rlim_cur < l.rlim_max {
            let raised = libc::rlimit { rlim_cur: l.rlim_max, rlim_max: l.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(io::Error::last_os_error());
            }
            l.rlim_cur = l.rlim_max;
        }
    }
    Ok(l.rlim_cur)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_full_gate_waits_and_a_silent_peer_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gate = Gate::new(listener, "test", 1, Duration::from_millis(200), Duration::from_millis(300));
        let counters = gate.counters();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let (mut first, _) = gate.accept().await;
        // The gate is full: the second connection waits until the first,
        // silent, is closed for it.
        let second = tokio::spawn(async move {
            let (mut s, _) = gate.accept().await;
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.map(|_| b)
        });
        let mut b = [0u8; 1];
        let err = first.read(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(counters.timed_out.get(), 1);
        drop(first);
        talker.write_all(b"hello").await.unwrap();
        assert_eq!(&second.await.unwrap().unwrap(), b"hello");
        assert_eq!(counters.full.get(), 1);
        assert_eq!(counters.accepted.get(), 2);
    }

    #[tokio::test]
    async fn a_peer_that_takes_a_stream_is_not_idle_but_one_that_never_spoke_is() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let idle = Duration::from_millis(300);
        let mut gate = Gate::new(listener, "test", 4, Duration::from_millis(300), idle);
        // Asks once, then only takes what is streamed to it, for 3 idle periods.
        let mut follower = TcpStream::connect(addr).await.unwrap();
        follower.write_all(b"GET").await.unwrap();
        let (mut stream, _) = gate.accept().await;
        let mut b = [0u8; 3];
        stream.read_exact(&mut b).await.unwrap();
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut b = [0u8; 64];
            while let Ok(n) = follower.read(&mut b).await {
                if n == 0 {
                    break;
                }
                got += n;
            }
            got
        });
        let (mut rd, mut wr) = tokio::io::split(stream);
        let read_side = tokio::spawn(async move { rd.read(&mut [0u8; 1]).await });
        for _ in 0..9 {
            tokio::time::sleep(idle / 3).await;
            wr.write_all(b"event\n").await.unwrap();
        }
        assert!(!read_side.is_finished(), "a stream its peer takes was closed as idle");
        drop(wr);
        read_side.abort();
        let _ = reader.await;
        // Written to before it ever spoke: still the handshake timeout.
        let _mute = TcpStream::connect(addr).await.unwrap();
        let (mut mute, _) = gate.accept().await;
        mute.write_all(b"banner").await.unwrap();
        let started = std::time::Instant::now();
        let err = mute.read(&mut [0u8; 1]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_millis(600), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_evicting_gate_closes_the_silent_connection_for_a_new_one() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gate = Gate::new(listener, "test", 1, Duration::from_secs(30), Duration::from_secs(30)).evicting();
        let counters = gate.counters();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (mut first, _) = gate.accept().await;
        let held = tokio::spawn(async move {
            let mut b = [0u8; 1];
            first.read(&mut b).await
        });
        let mut talker = TcpStream::connect(addr).await.unwrap();
        let started = std::time::Instant::now();
        let (mut second, _) = gate.accept().await;
        assert!(started.elapsed() < Duration::from_secs(5), "not the 30 s timeout: {:?}", started.elapsed());
        let err = held.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        talker.write_all(b"q").await.unwrap();
        let mut b = [0u8; 1];
        second.read_exact(&mut b).await.unwrap();
        assert_eq!((counters.evicted.get(), counters.open.get()), (1, 1));
    }

    #[test]
    fn the_soft_descriptor_limit_is_raised_to_the_hard_one() {
        let n = raise_nofile().unwrap();
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes only the struct given.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
        assert_eq!((n, l.rlim_cur), (l.rlim_max, l.rlim_max));
    }
}
