//! The zone files' I/O, off the updater's task: one thread that reads and
//! parses edited files, and renders, validates and writes (atomically, with
//! fsyncs) what is served. Jobs run one at a time in the order given, so a
//! read asked for after a write sees that write's end first. Bounded both
//! ways: a full queue refuses a job instead of growing.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use hickory_proto::rr::{LowerName, Name};
use tokio::sync::mpsc;

use super::sync::{WriteTicket, Written};
use super::{MemberNote, ZoneError, ZoneFile, render_block};
use crate::sys::fs::write_atomic;

/// Jobs waiting, at most.
const QUEUE: usize = 64;

/// A pool's managed block as it should be written.
#[derive(Debug, Clone)]
pub struct Block {
    pub name: Name,
    pub ttl: u32,
    pub addresses: Vec<IpAddr>,
    pub notes: Arc<[MemberNote]>,
}

/// Work for the I/O thread.
#[derive(Debug)]
pub enum Job {
    /// Read and parse a file an operator may have changed; unless `force`,
    /// text this thread wrote last is not parsed again.
    Read { origin: LowerName, path: PathBuf, force: bool },
    /// Write what is served into the zone file, keeping the operator's text.
    Write(Box<WriteJob>),
    /// A zone file no longer served: freed here, where its size costs no
    /// one a wait.
    Release(Arc<ZoneFile>),
}

#[derive(Debug)]
pub struct WriteJob {
    pub origin: LowerName,
    /// The file as last read: its text is rewritten.
    pub base: Arc<ZoneFile>,
    pub serial: u32,
    pub blocks: Vec<Block>,
    pub ticket: WriteTicket,
}

/// A file's text and what parsing it gave; `None` when the text is what
/// this thread wrote last (so it parses, and the caller holds it already).
pub type Read = (String, Option<Result<ZoneFile, ZoneError>>);

/// What the I/O thread did.
#[derive(Debug)]
pub enum Done {
    /// The file's text and what parsing it gave.
    Read {
        origin: LowerName,
        path: PathBuf,
        read: Box<Result<Read, std::io::Error>>,
    },
    Write(Box<WriteDone>),
}

#[derive(Debug)]
pub struct WriteDone {
    pub origin: LowerName,
    pub ticket: WriteTicket,
    pub outcome: Written,
    /// The file written, parsed (when `outcome` is `Done`).
    pub file: Option<ZoneFile>,
    /// The edit found on disk instead of `ticket.based_on` (when `Edited`).
    pub edit: Option<Read>,
    /// Why the write failed or was invalid.
    pub error: Option<String>,
}

/// The handle the updater keeps.
pub struct ZoneIo {
    jobs: std_mpsc::SyncSender<Job>,
}

impl ZoneIo {
    /// Starts the I/O thread; results arrive on the returned receiver. The
    /// thread ends when the handle is dropped.
    /// Zone files it reads are at most `limit` bytes.
    pub fn start(limit: u64) -> (Self, mpsc::Receiver<Done>) {
        let (jobs, rx) = std_mpsc::sync_channel::<Job>(QUEUE);
        let (done, results) = mpsc::channel(QUEUE);
        let spawned = std::thread::Builder::new().name("vnamed-zone-io".into()).spawn(move || {
            // Rendering and checking a large zone takes milliseconds: never
            // in front of the updater or the DNS workers on a busy core.
            if let Err(error) = crate::sys::thread::lower_priority() {
                tracing::debug!(%error, "zone file thread keeps its priority");
            }
            let mut wrote: HashMap<LowerName, Arc<str>> = HashMap::new();
            for job in rx {
                let Some(result) = run(job, &mut wrote, limit) else { continue };
                if done.blocking_send(result).is_err() {
                    return; // the updater is gone
                }
            }
        });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start the zone file thread; zone files will not be written");
        }
        (Self { jobs }, results)
    }

    /// Queues a job; gives it back when the queue is full (or the thread is gone).
    pub fn submit(&self, job: Job) -> Result<(), Job> {
        self.jobs.try_send(job).map_err(|e| match e {
            std_mpsc::TrySendError::Full(j) | std_mpsc::TrySendError::Disconnected(j) => j,
        })
    }
}

fn read(path: &std::path::Path, origin: &LowerName, skip: Option<&Arc<str>>, limit: u64) -> Result<Read, std::io::Error> {
    let text = crate::files::read_regular(path, limit, crate::files::Links::Refuse)?;
    if skip.is_some_and(|s| **s == *text) {
        return Ok((text, None));
    }
    let parsed = ZoneFile::parse(path, Name::from(origin), text.clone());
    Ok((text, Some(parsed)))
}

/// Does one job; `wrote` keeps the text last written to each zone's file.
pub fn run(job: Job, wrote: &mut HashMap<LowerName, Arc<str>>, limit: u64) -> Option<Done> {
    match job {
        Job::Read { origin, path, force } => {
            let read = Box::new(read(&path, &origin, wrote.get(&origin).filter(|_| !force), limit));
            Some(Done::Read { origin, path, read })
        }
        Job::Write(job) => {
            let done = write(*job, limit);
            if let Written::Done(text) = &done.outcome {
                wrote.insert(done.origin.clone(), text.clone());
            }
            Some(Done::Write(Box::new(done)))
        }
        Job::Release(file) => {
            drop(file);
            None
        }
    }
}

fn write(job: WriteJob, limit: u64) -> WriteDone {
    let WriteJob { origin, base, serial, blocks, ticket } = job;
    let mut done = WriteDone { origin, ticket, outcome: Written::Failed, file: None, edit: None, error: None };
    let path = base.path.clone();
    // A link where the file was: neither read nor written through (nor
    // replaced); the operator puts a regular file back.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
        done.error = Some("is a symbolic link: zone files in zones_dir must be regular files; not written".into());
        return done;
    }
    // An edit we have not read yet wins over our write; the text is
    // parsed only then.
    match read(&path, &done.origin, Some(&done.ticket.based_on), limit) {
        Ok((text, Some(parsed))) => {
            done.outcome = Written::Edited;
            done.edit = Some((text, Some(parsed)));
            return done;
        }
        Ok((_, None)) => {}
        // Gone or unreadable: write it anew from what we hold.
        Err(_) => {}
    }
    let mut rendered: BTreeMap<String, String> =
        blocks.iter().map(|b| (b.name.to_string(), render_block(&b.name, b.ttl, &b.addresses, &b.notes))).collect();
    for gone in &done.ticket.dropped {
        rendered.entry(gone.clone()).or_default();
    }
    // Never put a file on disk that we would refuse to load.
    let file = match base.rewritten(serial, &rendered) {
        Ok(f) => f,
        Err(e) => {
            done.outcome = Written::Invalid;
            done.error = Some(e.to_string());
            return done;
        }
    };
    match write_atomic(&path, &file.text) {
        Ok(()) => {
            done.outcome = Written::Done(file.text.clone());
            done.file = Some(file);
        }
        Err(e) => done.error = Some(e.to_string()),
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::sync::FileSync;
    use std::time::Instant;

    const ZONE: &str = "$TTL 300\n@ IN SOA ns1 hostmaster ( 7 3600 600 86400 60 )\n  IN NS ns1\nns1 IN A 127.0.0.1\n";

    fn setup() -> (tempfile::TempDir, ZoneFile, LowerName) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.zone");
        std::fs::write(&path, ZONE).unwrap();
        let file = ZoneFile::load(&path, 1 << 30).unwrap();
        let origin = file.data.lower_origin.clone();
        (dir, file, origin)
    }

    fn block(addr: &str) -> Block {
        Block {
            name: Name::from_ascii("www.example.").unwrap(),
            ttl: 5,
            addresses: vec![addr.parse().unwrap()],
            notes: Arc::from([MemberNote { id: "a".into(), admin: "auto", weight: 1 }]),
        }
    }

    fn job(file: &ZoneFile, origin: &LowerName, sync: &mut FileSync, serial: u32, addr: &str) -> Job {
        let ticket = sync.begin_write(Instant::now());
        Job::Write(Box::new(WriteJob { origin: origin.clone(), base: Arc::new(file.clone()), serial, blocks: vec![block(addr)], ticket }))
    }

    #[test]
    fn a_write_keeps_the_operators_text_and_a_read_sees_it() {
        let (_dir, file, origin) = setup();
        let mut sync = FileSync::new(file.text.clone());
        let mut wrote = HashMap::new();
        let Some(Done::Write(done)) = run(job(&file, &origin, &mut sync, 8, "127.0.10.1"), &mut wrote, 1 << 30) else { panic!("a write") };
        assert!(matches!(done.outcome, Written::Done(_)), "{:?}", done.error);
        let written = done.file.unwrap();
        assert_eq!(written.serial, 8);
        assert!(written.text.contains("ns1 IN A 127.0.0.1"));
        let reparsed = ZoneFile::parse(&file.path, Name::from(&origin), written.text.to_string()).unwrap();
        assert_eq!(reparsed.addresses(&Name::from_ascii("www.example.").unwrap()), vec!["127.0.10.1".parse::<IpAddr>().unwrap()]);
        let Some(Done::Read { read, .. }) =
            run(Job::Read { origin: origin.clone(), path: file.path.clone(), force: false }, &mut wrote, 1 << 30)
        else {
            panic!("a read")
        };
        let (text, parsed) = read.unwrap();
        assert_eq!(text, &*written.text);
        assert!(parsed.is_none(), "our own write is not parsed again");
        let Some(Done::Read { read, .. }) =
            run(Job::Read { origin: origin.clone(), path: file.path.clone(), force: true }, &mut wrote, 1 << 30)
        else {
            panic!("a read")
        };
        assert_eq!(read.unwrap().1.unwrap().unwrap().serial, 8);
    }

    #[test]
    fn an_edit_found_on_disk_is_not_written_over() {
        let (_dir, file, origin) = setup();
        let mut sync = FileSync::new(file.text.clone());
        let edited = ZONE.replace("( 7", "( 9").replace("ns1 IN A 127.0.0.1", "ns1 IN A 127.0.0.2");
        std::fs::write(&file.path, &edited).unwrap();
        let Some(Done::Write(done)) = run(job(&file, &origin, &mut sync, 8, "127.0.10.1"), &mut HashMap::new(), 1 << 30) else {
            panic!("a write")
        };
        assert_eq!(done.outcome, Written::Edited);
        let (text, parsed) = done.edit.unwrap();
        assert_eq!((text.as_str(), parsed.unwrap().unwrap().serial), (edited.as_str(), 9));
        assert_eq!(std::fs::read_to_string(&file.path).unwrap(), edited, "the edit is untouched");
    }

    #[test]
    fn a_rendering_that_would_not_load_is_never_written() {
        let (_dir, file, origin) = setup();
        let mut sync = FileSync::new(file.text.clone());
        let mut bad = block("127.0.10.1");
        bad.name = Name::from_ascii("www.elsewhere.").unwrap();
        let ticket = sync.begin_write(Instant::now());
        let job =
            Job::Write(Box::new(WriteJob { origin: origin.clone(), base: Arc::new(file.clone()), serial: 8, blocks: vec![bad], ticket }));
        let Some(Done::Write(done)) = run(job, &mut HashMap::new(), 1 << 30) else { panic!("a write") };
        assert_eq!(done.outcome, Written::Invalid);
        assert_eq!(std::fs::read_to_string(&file.path).unwrap(), ZONE);
    }

    #[test]
    fn a_hostile_member_id_writes_nothing_of_its_own() {
        let (_dir, file, origin) = setup();
        let mut sync = FileSync::new(file.text.clone());
        let mut hostile = block("127.0.10.1");
        hostile.notes = Arc::from([
            MemberNote { id: "x\nevil 60 IN TXT \"owned\"".into(), admin: "auto", weight: 1 },
            MemberNote { id: "b".into(), admin: "down", weight: 2 },
        ]);
        let ticket = sync.begin_write(Instant::now());
        let job = Job::Write(Box::new(WriteJob {
            origin: origin.clone(),
            base: Arc::new(file.clone()),
            serial: 8,
            blocks: vec![hostile],
            ticket,
        }));
        let Some(Done::Write(done)) = run(job, &mut HashMap::new(), 1 << 30) else { panic!("a write") };
        assert!(matches!(done.outcome, Written::Done(_)), "{:?}", done.error);
        let text = std::fs::read_to_string(&file.path).unwrap();
        assert!(!text.contains("evil") && !text.contains("owned"), "{text}");
        assert!(text.contains("; vnamed:member b admin=down weight=2\n"), "the valid id kept: {text}");
        assert_eq!(text.matches("vnamed:end").count(), 1, "{text}");
    }

    #[test]
    fn the_thread_answers_in_order() {
        let (_dir, file, origin) = setup();
        let mut sync = FileSync::new(file.text.clone());
        let (io, mut done) = ZoneIo::start(1 << 30);
        io.submit(job(&file, &origin, &mut sync, 8, "127.0.10.1")).unwrap();
        io.submit(Job::Read { origin: origin.clone(), path: file.path.clone(), force: true }).unwrap();
        assert!(matches!(done.blocking_recv(), Some(Done::Write(_))));
        let Some(Done::Read { read, .. }) = done.blocking_recv() else { panic!("then the read") };
        assert_eq!(read.unwrap().1.unwrap().unwrap().serial, 8);
    }
}
