//! AF_PACKET sockets with a receive ring shared with the kernel
//! (PACKET_MMAP, TPACKET_V2): the kernel writes each frame into the next
//! slot of the ring and marks it ready, the reader takes every ready slot
//! without a system call and hands it back, and sleeps in `poll(2)` only
//! when the ring is empty. Under load one wake-up drains many frames; at
//! rest each frame is seen at once (a block-based TPACKET_V3 ring would
//! hold a lone frame until its block timer fires). Sockets of one process
//! can share an interface's frames as a fanout group steered by a
//! classic BPF program. Frames the host sends are not captured.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `ETH_P_ALL` in network byte order, as `bind` and `socket` want it.
const ALL_PROTOCOLS: u16 = (libc::ETH_P_ALL as u16).to_be();

/// The shape of a receive ring.
#[derive(Debug, Clone, Copy)]
pub struct RingSize {
    /// Bytes per slot, header included; frames longer than fits are cut
    /// (and flagged).
    pub slot: usize,
    /// Slots in the ring.
    pub slots: usize,
}

impl RingSize {
    /// Slots big enough for a frame of `mtu` bytes of payload (plus the
    /// Ethernet header, a VLAN tag and the ring's own header), a power of
    /// two, at least 2 KiB; `bytes` of ring in all, at least one block.
    pub fn for_mtu(mtu: usize, bytes: usize) -> Self {
        let slot = (mtu + 18 + libc::TPACKET2_HDRLEN + libc::TPACKET_ALIGNMENT).next_power_of_two().max(2048);
        Self { slot, slots: (bytes / slot).max(BLOCK / slot.min(BLOCK)) }
    }
}

/// The ring is asked for in blocks of this many bytes (a multiple of the
/// page size and of any slot size up to it).
const BLOCK: usize = 1 << 16;

/// A packet socket bound to one interface, receiving every frame that
/// arrives there into its ring. Frames are sent on it with `sendmmsg`.
pub struct Ring {
    fd: OwnedFd,
    map: NonNull<u8>,
    map_len: usize,
    slot: usize,
    slots: usize,
    next: usize,
    spin: Spin,
}

/// How long a reader looks for the next frame before it sleeps (pure):
/// it grows while frames keep coming within it, or come soon after the
/// reader fell asleep, and halves each time it passes in vain, so that a
/// quiet interface costs no CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spin {
    window: Duration,
}

impl Spin {
    /// The longest look before sleeping.
    pub const MAX: Duration = Duration::from_micros(400);
    const STEP: Duration = Duration::from_micros(25);

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The look ended: a frame came within it, or it passed in vain.
    pub fn caught(&mut self, caught: bool) {
        self.window = if caught { (self.window * 2).max(Self::STEP).min(Self::MAX) } else { self.shrunk() };
    }

    /// The reader looked, then slept, `total` in all, and woke with a
    /// frame or without: a frame that came within `MAX` of the look's
    /// start would have been caught by a longer look.
    pub fn slept(&mut self, ready: bool, total: Duration) {
        self.caught(ready && total <= Self::MAX);
    }

    fn shrunk(&self) -> Duration {
        let half = self.window / 2;
        if half < Self::STEP { Duration::ZERO } else { half }
    }
}

// SAFETY: the mapping belongs to the ring alone (it is unmapped on drop and
// never handed out beyond a borrow of the ring), so moving the ring to
// another thread moves sole access with it.
unsafe impl Send for Ring {}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn set_option<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points at a live T of the size given, which the kernel only reads.
    check(unsafe { libc::setsockopt(fd, libc::SOL_PACKET, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) }).map(drop)
}

impl Ring {
    /// Opens the socket on interface `ifindex` with a ring of `size`.
    pub fn open(ifindex: u32, size: RingSize) -> io::Result<Self> {
        if !size.slot.is_multiple_of(libc::TPACKET_ALIGNMENT) || !BLOCK.is_multiple_of(size.slot) || size.slots == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("ring slots of {} bytes", size.slot)));
        }
        let per_block = BLOCK / size.slot;
        let blocks = size.slots.div_ceil(per_block);
        let slots = blocks * per_block;
        // SAFETY: plain system call; the descriptor it returns is owned right away.
        let raw = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(ALL_PROTOCOLS)) })?;
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_option(raw, libc::PACKET_VERSION, &(libc::tpacket_versions::TPACKET_V2 as libc::c_int))?;
        let req = libc::tpacket_req {
            tp_block_size: BLOCK as u32,
            tp_block_nr: blocks as u32,
            tp_frame_size: size.slot as u32,
            tp_frame_nr: slots as u32,
        };
        set_option(raw, libc::PACKET_RX_RING, &req)?;
        let map_len = BLOCK * blocks;
        // SAFETY: maps the ring the kernel just set up for this socket, at an
        // address of the kernel's choosing; the result is checked below.
        let map = unsafe { libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, raw, 0) };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(map.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave a null ring"))?;
        let ring = Self { fd, map, map_len, slot: size.slot, slots, next: 0, spin: Spin::default() };
        // Frames we send are not brought back to us (Linux 4.20 and later;
        // without it they are recognised by their source MAC and skipped).
        let _ = set_option(raw, libc::PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
        // Frames we send skip the queueing discipline, as a bridge's would.
        let _ = set_option(raw, libc::PACKET_QDISC_BYPASS, &1 as &libc::c_int);
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid until set below.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ALL_PROTOCOLS;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll for the call's duration.
        check(unsafe { libc::bind(raw, (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t) })?;
        Ok(ring)
    }

    /// Joins a fanout group steered by `program` (classic BPF, whose
    /// result modulo the group's size picks the member). With `group`
    /// `None` a new group with an id unique in the network namespace is
    /// made; its id is returned for the other members to join.
    pub fn join(&self, group: Option<u16>, program: &[libc::sock_filter]) -> io::Result<u16> {
        let steer = libc::PACKET_FANOUT_CBPF | libc::PACKET_FANOUT_FLAG_IGNORE_OUTGOING;
        let raw = self.fd.as_raw_fd();
        match group {
            Some(id) => set_option(raw, libc::PACKET_FANOUT, &(u32::from(id) | (steer << 16)))?,
            None => set_option(raw, libc::PACKET_FANOUT, &((steer | libc::PACKET_FANOUT_FLAG_UNIQUEID) << 16))?,
        }
        let mut value: u32 = 0;
        let mut len = size_of::<u32>() as libc::socklen_t;
        // SAFETY: `value` and `len` are live and sized for the u32 the kernel writes.
        check(unsafe { libc::getsockopt(raw, libc::SOL_PACKET, libc::PACKET_FANOUT, (&mut value as *mut u32).cast(), &mut len) })?;
        if group.is_none() {
            let prog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr().cast_mut() };
            set_option(raw, libc::PACKET_FANOUT_DATA, &prog)?;
        }
        Ok((value & 0xFFFF) as u16)
    }

    /// Has the interface accept frames to `mac` too (on a NIC, an entry
    /// in its unicast filter, or promiscuous mode where it has none).
    pub fn accept_mac(&self, ifindex: u32, mac: [u8; 6]) -> io::Result<()> {
        let mut address = [0u8; 8];
        address[..6].copy_from_slice(&mac);
        // PACKET_MR_UNICAST (linux/if_packet.h)
        let m = libc::packet_mreq { mr_ifindex: ifindex as i32, mr_type: 3, mr_alen: 6, mr_address: address };
        set_option(self.fd.as_raw_fd(), libc::PACKET_ADD_MEMBERSHIP, &m)
    }

    /// Waits up to `timeout` for a frame; true when one is ready. Under
    /// load it first gives the core away (`sched_yield`) and looks again,
    /// for as long as `spin` says: a thread that never sleeps is never
    /// woken, and waking it is a cross-CPU interrupt paid by whoever
    /// sent the frame. When frames are far apart it just sleeps.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<bool> {
        if self.ready() {
            return Ok(true);
        }
        let started = Instant::now();
        let until = started + self.spin.window();
        while Instant::now() < until {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
            if self.ready() {
                self.spin.caught(true);
                return Ok(true);
            }
        }
        let mut p = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `p` is one live pollfd for the call's duration.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        let ready = self.ready();
        self.spin.slept(ready, started.elapsed());
        Ok(ready)
    }

    fn header(&self, i: usize) -> *mut libc::tpacket2_hdr {
        // SAFETY: i < slots, so the slot lies inside the mapping.
        unsafe { self.map.as_ptr().add(i * self.slot).cast() }
    }

    fn status(&self, i: usize) -> &AtomicU32 {
        // SAFETY: tp_status is the slot header's first field, a 4-byte-aligned
        // u32 in the mapping that the kernel and we hand back and forth; an
        // atomic gives the ordering the hand-over needs.
        unsafe { &*self.header(i).cast::<AtomicU32>() }
    }

    fn ready(&self) -> bool {
        self.status(self.next).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    /// The next frame the kernel has written, if any; the slot goes back
    /// to the kernel when the returned `Frame` is dropped.
    pub fn next<'a>(&'a mut self) -> Option<Frame<'a>> {
        let i = self.next;
        let status = self.status(i).load(Ordering::Acquire);
        if status & libc::TP_STATUS_USER == 0 {
            return None;
        }
        self.next = (i + 1) % self.slots;
        let this: &'a Ring = self;
        // SAFETY: the kernel marked the slot ours (TP_STATUS_USER, read with
        // acquire above), so its header is written and stable until handed back.
        let h = unsafe { &*this.header(i) };
        let start = usize::from(h.tp_mac);
        let len = (h.tp_snaplen as usize).min(this.slot.saturating_sub(start));
        // SAFETY: the frame lies inside the slot (clamped above); the slot is
        // ours until the Frame, which borrows the ring mutably, hands it back.
        let data = unsafe { std::slice::from_raw_parts_mut(this.header(i).cast::<u8>().add(start), len) };
        Some(Frame { data, cut: h.tp_len > h.tp_snaplen, tagged: status & libc::TP_STATUS_VLAN_VALID != 0, status: this.status(i) })
    }

    /// Frames the kernel could not put in the ring since last asked.
    pub fn drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats is plain old data.
        let mut s: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `s` and `len` are live and sized for the struct the kernel writes.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut s as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        })?;
        Ok(u64::from(s.tp_drops))
    }

    /// A second descriptor of the socket, to send on.
    pub fn sender(&self) -> io::Result<OwnedFd> {
        self.fd.try_clone()
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `open` with this length and no
        // borrow of it outlives the ring.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.map_len) };
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// One received frame, in the ring; it may be rewritten in place.
pub struct Frame<'a> {
    data: &'a mut [u8],
    cut: bool,
    tagged: bool,
    status: &'a AtomicU32,
}

impl Frame<'_> {
    /// Longer on the wire than the slot could hold (what is here is cut).
    pub fn cut(&self) -> bool {
        self.cut
    }

    /// Arrived with a VLAN tag, which the kernel removed.
    pub fn tagged(&self) -> bool {
        self.tagged
    }
}

impl std::ops::Deref for Frame<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.data
    }
}

impl std::ops::DerefMut for Frame<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.data
    }
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.status.store(libc::TP_STATUS_KERNEL, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_look_before_sleeping_grows_under_load_and_goes_when_quiet() {
        let mut s = Spin::default();
        assert_eq!(s.window(), Duration::ZERO);
        // A frame soon after falling asleep: next time, look first.
        s.slept(true, Duration::from_micros(30));
        assert_eq!(s.window(), Spin::STEP);
        for _ in 0..10 {
            s.caught(true);
        }
        assert_eq!(s.window(), Spin::MAX);
        // Looks in vain halve it, down to nothing.
        let mut steps = 0;
        while s.window() > Duration::ZERO {
            s.caught(false);
            steps += 1;
        }
        assert!(steps <= 5, "{steps}");
        // Long sleeps (frames far apart) keep it at nothing.
        s.slept(true, Duration::from_millis(5));
        s.slept(false, Duration::from_millis(100));
        assert_eq!(s.window(), Duration::ZERO);
        // A look that ended in vain, then a frame while asleep but within
        // the longest look: it grows again.
        s = Spin { window: Spin::STEP * 2 };
        s.slept(true, Duration::from_micros(150));
        assert_eq!(s.window(), Spin::STEP * 4);
    }

    #[test]
    fn slots_fit_the_mtu_and_the_ring_holds_at_least_a_block() {
        let s = RingSize::for_mtu(1500, 4 << 20);
        assert_eq!(s.slot, 2048);
        assert_eq!(s.slots, 2048);
        let j = RingSize::for_mtu(9000, 0);
        assert_eq!(j.slot, 16384);
        assert_eq!(j.slots, 4);
    }

    /// Needs CAP_NET_RAW: frames sent on loopback come back through the
    /// ring once each (not again as outgoing), in order. (The ring is
    /// large: other tests share loopback.)
    #[test]
    #[ignore = "needs root (CAP_NET_RAW); run by .ci/run as root"]
    fn frames_on_loopback_arrive_in_the_ring() {
        let lo = if_index("lo");
        let mut ring = Ring::open(lo, RingSize { slot: 2048, slots: 4096 }).unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = udp.local_addr().unwrap();
        let mut seen = 0;
        for round in 0..3u8 {
            for i in 0..50u8 {
                udp.send_to(&[round, i, 0x5A, 0xA5], to).unwrap();
            }
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let mut got = Vec::new();
            while got.len() < 50 && std::time::Instant::now() < deadline {
                ring.wait(Duration::from_millis(100)).unwrap();
                while let Some(f) = ring.next() {
                    assert!(!f.cut());
                    // Ethernet (14) + IPv4 (20) + UDP (8) + our 4 bytes.
                    if f.len() == 46 && f[44..] == [0x5A, 0xA5] && f[42] == round {
                        got.push(f[43]);
                    }
                }
            }
            assert_eq!(got, (0..50).collect::<Vec<u8>>(), "round {round}");
            seen += got.len();
        }
        assert_eq!(seen, 150);
        ring.drops().unwrap();
    }

    fn if_index(name: &str) -> libc::c_uint {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }
}
