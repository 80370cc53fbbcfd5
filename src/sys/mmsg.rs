//! Batched UDP I/O with `recvmmsg(2)` and `sendmmsg(2)`: one system call
//! moves up to a batch of datagrams each way.

use std::io;
use std::mem::zeroed;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::SockAddr;

/// Largest datagram kept; longer ones are flagged truncated and dropped.
pub const DATAGRAM: usize = 4096;

/// Receive buffers for a batch of datagrams. The `mmsghdr`s point into the
/// boxed buffers, which never move once allocated.
pub struct RecvBatch {
    bufs: Box<[[u8; DATAGRAM]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[libc::mmsghdr]>,
    count: usize,
}

// SAFETY: the raw pointers only ever point into the batch's own boxes,
// which move with it and are never shared.
unsafe impl Send for RecvBatch {}

impl RecvBatch {
    pub fn new(n: usize) -> Self {
        let mut bufs = vec![[0u8; DATAGRAM]; n].into_boxed_slice();
        let mut addrs: Box<[libc::sockaddr_storage]> = (0..n)
            .map(|_| {
                // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
                unsafe { zeroed() }
            })
            .collect();
        let mut iovs: Box<[libc::iovec]> =
            bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: DATAGRAM }).collect();
        let hdrs: Box<[libc::mmsghdr]> = (0..n)
            .map(|i| {
                // SAFETY: mmsghdr is plain old data; null pointers and zero lengths are valid until set below.
                let mut h: libc::mmsghdr = unsafe { zeroed() };
                h.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
                h.msg_hdr.msg_iov = &mut iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        Self { bufs, addrs, iovs, hdrs, count: 0 }
    }

    /// Blocks until at least one datagram arrives (or the socket's read
    /// timeout passes), then takes all that are waiting, up to the batch size.
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let fd: RawFd = socket.as_raw_fd();
        for (i, h) in self.hdrs.iter_mut().enumerate() {
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
            debug_assert_eq!(h.msg_hdr.msg_iov, &mut self.iovs[i] as *mut _);
        }
        // SAFETY: every header points at this batch's own buffer, address and iovec,
        // which live as long as `self` and are not moved; the kernel writes at most
        // the lengths the headers give.
        let n = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), self.hdrs.len() as u32, libc::MSG_WAITFORONE, std::ptr::null_mut()) };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        self.count = n as usize;
        Ok(self.count)
    }

    /// Datagram `i` of the last receive: its bytes, its sender, and whether
    /// it was longer than the buffer.
    pub fn get(&self, i: usize) -> Option<(&[u8], SocketAddr, bool)> {
        if i >= self.count {
            return None;
        }
        let h = &self.hdrs[i];
        let len = (h.msg_len as usize).min(DATAGRAM);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        let addr = socket_addr(&self.addrs[i], h.msg_hdr.msg_namelen)?;
        Some((&self.bufs[i][..len], addr, truncated))
    }
}

fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match storage.ss_family as i32 {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::new(ip.into(), u16::from_be(a.sin_port)))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe { &*(storage as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(std::net::SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

/// Datagrams (or frames) waiting to go out in one `sendmmsg`.
pub struct SendBatch {
    bufs: Box<[[u8; DATAGRAM]]>,
    lens: Box<[usize]>,
    /// Where each goes; none on a socket bound to its one destination
    /// (a packet socket bound to an interface).
    addrs: Box<[Option<SockAddr>]>,
    count: usize,
    // Scratch for flush, kept to avoid allocating per batch.
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the scratch pointers are rebuilt on every flush and never outlive it.
unsafe impl Send for SendBatch {}

impl SendBatch {
    pub fn new(n: usize) -> Self {
        Self {
            bufs: vec![[0u8; DATAGRAM]; n].into_boxed_slice(),
            lens: vec![0; n].into_boxed_slice(),
            addrs: (0..n).map(|_| None).collect(),
            count: 0,
            iovs: Vec::with_capacity(n),
            hdrs: Vec::with_capacity(n),
        }
    }

    pub fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The buffer for the next response; `commit` it once written.
    pub fn next_buf(&mut self) -> &mut [u8] {
        &mut self.bufs[self.count]
    }

    pub fn commit(&mut self, len: usize, to: impl Into<Option<SocketAddr>>) {
        self.lens[self.count] = len;
        self.addrs[self.count] = to.into().map(SockAddr::from);
        self.count += 1;
    }

    /// Queues a copy of `data` (cut to the buffer size).
    pub fn push(&mut self, data: &[u8], to: impl Into<Option<SocketAddr>>) {
        let len = data.len().min(DATAGRAM);
        self.next_buf()[..len].copy_from_slice(&data[..len]);
        self.commit(len, to);
    }

    /// Sends everything queued and says how many went; datagrams the
    /// kernel refuses are dropped (UDP gives no guarantee, and the client
    /// will retry).
    pub fn flush(&mut self, socket: &impl AsRawFd) -> usize {
        let fd = socket.as_raw_fd();
        let iovs = &mut self.iovs;
        iovs.clear();
        iovs.extend((0..self.count).map(|i| libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.lens[i] }));
        let hdrs = &mut self.hdrs;
        hdrs.clear();
        for (iov, addr) in iovs.iter_mut().zip(&self.addrs[..self.count]) {
            // SAFETY: mmsghdr is plain old data; all zeroes is valid until set below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            if let Some(addr) = addr {
                h.msg_hdr.msg_name = addr.as_ptr() as *mut libc::c_void;
                h.msg_hdr.msg_namelen = addr.len();
            }
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            hdrs.push(h);
        }
        let (mut done, mut sent) = (0, 0);
        while done < hdrs.len() {
            // SAFETY: the headers point into `bufs`, `addrs` and `iovs`, all alive and
            // unmoved for the call; the kernel only reads them.
            let n = unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (hdrs.len() - done) as u32, 0) };
            if n <= 0 {
                // Skip the datagram that failed and go on with the rest.
                done += 1;
                continue;
            }
            done += n as usize;
            sent += n as usize;
        }
        self.count = 0;
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    #[test]
    fn batches_round_trip_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 10], server.local_addr().unwrap()).unwrap();
        }
        let mut rx = RecvBatch::new(8);
        let mut got = 0;
        while got < 5 {
            let n = rx.recv(&server).unwrap();
            let mut tx = SendBatch::new(8);
            for i in 0..n {
                let (data, from, truncated) = rx.get(i).unwrap();
                assert!(!truncated);
                assert_eq!(from, client.local_addr().unwrap());
                let len = data.len();
                let first = data[0];
                tx.next_buf()[..len].fill(first + 100);
                tx.commit(len, from);
            }
            assert_eq!(tx.flush(&server), n);
            got += n;
        }
        let mut buf = [0u8; 64];
        for _ in 0..5 {
            let (n, _) = client.recv_from(&mut buf).unwrap();
            assert_eq!(n, 10);
            assert!(buf[0] >= 100);
        }
    }
}
