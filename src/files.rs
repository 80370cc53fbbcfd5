//! Reading the files vnamed is given (zone files, the configuration, TLS
//! material, keys): regular files only, with a size limit. A device, FIFO
//! or socket put where a file belongs (`ln -s /dev/zero`) is refused at
//! once instead of read for ever, and opening never waits for a FIFO's
//! writer.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What a symbolic link at the path means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Followed (to a regular file).
    Follow,
    /// Refused: the file itself must be a regular file (zone files, which
    /// vnamed rewrites in place).
    Refuse,
}

/// The whole text of the regular file at `path`, at most `limit` bytes.
pub fn read_regular(path: &Path, limit: u64, links: Links) -> io::Result<String> {
    String::from_utf8(read_bytes(path, limit, links)?).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Small files vnamed reads whole (TLS material, keys, passwords, caches), at most.
pub const SMALL_FILE: u64 = 1 << 20;

/// `read_regular`, as bytes.
pub fn read_bytes(path: &Path, limit: u64, links: Links) -> io::Result<Vec<u8>> {
    let refused = |why: String| io::Error::new(io::ErrorKind::InvalidInput, why);
    let mut flags = libc::O_NONBLOCK;
    if links == Links::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = fs::OpenOptions::new().read(true).custom_flags(flags).open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) { refused("is a symbolic link; it must be a regular file".into()) } else { e }
    })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused("is not a regular file (a device, FIFO, socket or directory); refused".into()));
    }
    if meta.len() > limit {
        return Err(refused(format!("is {} bytes, over the limit of {limit}", meta.len())));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(refused(format!("grew past the limit of {limit} bytes while read")));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_limit_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.zone");
        std::fs::write(&good, "text").unwrap();
        assert_eq!(read_regular(&good, 4, Links::Refuse).unwrap(), "text");
        assert!(read_regular(&good, 3, Links::Refuse).unwrap_err().to_string().contains("over the limit of 3"));
        let zero = dir.path().join("zero.zone");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_regular(&zero, 1 << 30, Links::Refuse).unwrap_err().to_string().contains("symbolic link"));
        assert!(read_regular(&zero, 1 << 30, Links::Follow).unwrap_err().to_string().contains("not a regular file"));
        let link = dir.path().join("link.zone");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert_eq!(read_regular(&link, 4, Links::Follow).unwrap(), "text", "a link to a regular file, where links are followed");
        let fifo = dir.path().join("fifo.zone");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let started = std::time::Instant::now();
        assert!(read_regular(&fifo, 1 << 30, Links::Follow).unwrap_err().to_string().contains("not a regular file"));
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "opening a FIFO does not wait for a writer");
    }
}
