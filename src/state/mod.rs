//! The authority's durable state: what it must not forget across a
//! restart or a crash (each zone's serial high-water mark, the overrides
//! the API acknowledged, the ring's server table, the last known state of
//! every pool's members, each zone's journal of differences for
//! incremental transfers), in one embedded transactional store (redb) in
//! `state_dir`. Every write is one transaction, durable when it returns;
//! the `writer` thread makes them, so no task waits for the disk.
//! After a failed write (a full disk) the database is closed and opened
//! again at the next write, as redb asks.

mod writer;

pub use writer::{ACKED_QUEUE, Durable, Saved, Ticket, Writer};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};

use crate::metrics::{Count, Expose, Writer as MetricsWriter};
use crate::pool::{Overrides, SavedPool};

/// Zone origin → the highest serial that may have been served.
const SERIALS: TableDefinition<&str, u32> = TableDefinition::new("serials");
/// Pool key → its overrides, as JSON.
const OVERRIDES: TableDefinition<&str, &str> = TableDefinition::new("overrides");
/// Pool key → its members' last known state, as JSON.
const POOLS: TableDefinition<&str, &str> = TableDefinition::new("pools");
/// `ring` → the ring's server table, as text.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// (Zone origin, row number) → one difference of the zone's journal, as
/// the zone module encodes it.
const JOURNAL: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("journal");

/// The file in `state_dir`.
pub const FILE: &str = "state.redb";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state_dir {0}: {1}")]
    Dir(String, std::io::Error),
    #[error("state store {path}: {message}")]
    Store { path: String, message: String },
    #[error("state store {path}: {what} {key}: {source}")]
    Corrupt { path: String, what: &'static str, key: String, source: serde_json::Error },
}

/// One change in a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Put {
    Serial(String, u32),
    /// `None` forgets the pool's overrides.
    Overrides(String, Option<Overrides>),
    /// `None` forgets the pool's saved state.
    Pool(String, Option<SavedPool>),
    Ring(String),
    /// A zone's journal: add row `row` (when there is one) and forget the
    /// rows numbered below `keep_from`.
    Journal {
        zone: String,
        row: Option<(u64, Vec<u8>)>,
        keep_from: u64,
    },
}

/// The kinds of state, as `/metrics` labels them.
const KINDS: [&str; 5] = ["serial", "overrides", "members", "ring", "journal"];

impl Put {
    fn kind_index(&self) -> usize {
        match self {
            Put::Serial(..) => 0,
            Put::Overrides(..) => 1,
            Put::Pool(..) => 2,
            Put::Ring(..) => 3,
            Put::Journal { .. } => 4,
        }
    }

    /// What a later put replaces: its kind and name. Puts sorted by it
    /// keep a zone's journal rows in the order they were made: a put that
    /// only forgets rows sorts at the number the next row will have, and
    /// that row (which forgets at least as much) replaces it.
    pub fn key(&self) -> (usize, String) {
        let name = match self {
            Put::Serial(n, _) | Put::Overrides(n, _) | Put::Pool(n, _) => n.clone(),
            Put::Ring(_) => String::new(),
            Put::Journal { zone, row, keep_from } => format!("{zone}\0{:020}", row.as_ref().map_or(*keep_from, |(n, _)| *n)),
        };
        (self.kind_index(), name)
    }
}

/// What the store counts: writes and failed writes by kind, writes owed
/// (failed, waiting for their retry), and the last error.
#[derive(Debug, Default)]
pub struct StateCounters {
    writes: [Count; KINDS.len()],
    failures: [Count; KINDS.len()],
    /// Owed by the writer in the background, and serial marks the catalog owes.
    pub owed: Count,
    pub owed_serials: Count,
    last_error: Mutex<Option<String>>,
}

impl StateCounters {
    /// The last failed write's error while writes are owed, for `vnamed status`.
    pub fn trouble(&self) -> Option<(u64, String)> {
        let owed = self.owed();
        let error = self.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        error.filter(|_| owed > 0).map(|e| (owed, e))
    }

    /// Writes that failed and wait for their retry.
    pub fn owed(&self) -> u64 {
        self.owed.get() + self.owed_serials.get()
    }
}

impl Expose for StateCounters {
    fn expose(&self, w: &mut MetricsWriter<'_, '_>) -> std::fmt::Result {
        let by_kind = |c: &[Count; KINDS.len()]| KINDS.iter().zip(c).map(|(k, n)| (vec![("what", (*k).into())], n.get())).collect();
        w.counters("vnamed_state_writes", "Writes to the state store, by what they saved.", by_kind(&self.writes))?;
        w.counters(
            "vnamed_state_write_failures",
            "Failed writes to the state store (retried), by what they saved.",
            by_kind(&self.failures),
        )?;
        w.gauge("vnamed_state_writes_owed", "Changes that failed to save and wait for their retry.", self.owed() as i64)
    }
}

/// Everything the store held at start-up.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    pub serials: BTreeMap<String, u32>,
    pub overrides: BTreeMap<String, Overrides>,
    pub pools: BTreeMap<String, SavedPool>,
    pub ring: Option<String>,
    /// Each zone's journal rows, in order, as the zone module encoded them.
    pub journals: BTreeMap<String, Vec<(u64, Vec<u8>)>>,
    /// No store was there: this is its first start.
    pub fresh: bool,
}

pub struct Store {
    path: PathBuf,
    db: Mutex<Option<Database>>,
    pub counters: Arc<StateCounters>,
}

impl Store {
    /// Opens (or creates) the store in `dir` and reads it whole. A store
    /// another process holds, or one that is damaged, is an error.
    pub fn open(dir: &Path) -> Result<(Self, Loaded), StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError::Dir(dir.display().to_string(), e))?;
        let path = dir.join(FILE);
        let fresh = !path.exists();
        let store = Self { path, db: Mutex::new(None), counters: Arc::default() };
        let mut loaded = store.with_db(|db| read_all(db, &store.path))?.map_err(|e| store.error(e))??;
        loaded.fresh = fresh;
        Ok((store, loaded))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, e: impl std::fmt::Display) -> StateError {
        StateError::Store { path: self.path.display().to_string(), message: e.to_string() }
    }

    /// Runs `f` with the database, opening it first when it is closed.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> T) -> Result<T, StateError> {
        let mut guard = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(Database::builder().create(&self.path).map_err(|e| self.error(e))?);
        }
        Ok(f(guard.as_ref().expect("opened above")))
    }

    /// Writes `puts` in one transaction, durable when this returns.
    pub fn write<'a>(&self, puts: impl IntoIterator<Item = &'a Put> + Clone) -> Result<(), StateError> {
        let done = match self.with_db(|db| write_all(db, puts.clone())) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                // After an I/O error redb must be opened again before the next write.
                *self.db.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Err(self.error(e))
            }
            Err(e) => Err(e),
        };
        let mut kinds = [false; KINDS.len()];
        for p in puts {
            kinds[p.kind_index()] = true;
        }
        let counts = if done.is_ok() { &self.counters.writes } else { &self.counters.failures };
        for (i, _) in kinds.iter().enumerate().filter(|(_, k)| **k) {
            counts[i].inc();
        }
        if let Err(e) = &done {
            *self.counters.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        }
        done
    }
}

/// A redb error as text (redb's own error is large to pass around).
#[derive(Debug)]
struct DbError(String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for DbError {
            fn from(e: $t) -> Self {
                DbError(e.to_string())
            }
        }
    )*};
}
db_errors!(redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);

fn write_all<'a>(db: &Database, puts: impl IntoIterator<Item = &'a Put>) -> Result<(), DbError> {
    let tx = db.begin_write()?;
    {
        let mut serials = tx.open_table(SERIALS)?;
        let mut overrides = tx.open_table(OVERRIDES)?;
        let mut pools = tx.open_table(POOLS)?;
        let mut meta = tx.open_table(META)?;
        let mut journal = tx.open_table(JOURNAL)?;
        for put in puts {
            match put {
                Put::Serial(zone, s) => {
                    serials.insert(zone.as_str(), *s)?;
                }
                Put::Overrides(pool, Some(o)) if !o.is_empty() => {
                    overrides.insert(pool.as_str(), json(o).as_str())?;
                }
                Put::Overrides(pool, _) => {
                    overrides.remove(pool.as_str())?;
                }
                Put::Pool(pool, Some(p)) => {
                    pools.insert(pool.as_str(), json(p).as_str())?;
                }
                Put::Pool(pool, None) => {
                    pools.remove(pool.as_str())?;
                }
                Put::Ring(text) => {
                    meta.insert("ring", text.as_str())?;
                }
                Put::Journal { zone, row, keep_from } => {
                    if let Some((n, bytes)) = row {
                        journal.insert((zone.as_str(), *n), bytes.as_slice())?;
                    }
                    journal.retain_in((zone.as_str(), 0)..(zone.as_str(), *keep_from), |_, _| false)?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(())
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

type Read = Result<Result<Loaded, StateError>, DbError>;

fn read_all(db: &Database, file: &Path) -> Read {
    let path = file.display().to_string();
    // Tables are created by the first write; make them exist for the read.
    let tx = db.begin_write()?;
    tx.open_table(SERIALS)?;
    tx.open_table(OVERRIDES)?;
    tx.open_table(POOLS)?;
    tx.open_table(META)?;
    tx.open_table(JOURNAL)?;
    tx.commit()?;
    let tx = db.begin_read()?;
    let mut out = Loaded::default();
    for row in tx.open_table(SERIALS)?.iter()? {
        let (k, v) = row?;
        out.serials.insert(k.value().to_owned(), v.value());
    }
    for row in tx.open_table(OVERRIDES)?.iter()? {
        let (k, v) = row?;
        match serde_json::from_str(v.value()) {
            Ok(o) => out.overrides.insert(k.value().to_owned(), o),
            Err(source) => return Ok(Err(StateError::Corrupt { path, what: "overrides of pool", key: k.value().to_owned(), source })),
        };
    }
    for row in tx.open_table(POOLS)?.iter()? {
        let (k, v) = row?;
        // Saved member states are soft: one that does not read is dropped.
        if let Ok(p) = serde_json::from_str(v.value()) {
            out.pools.insert(k.value().to_owned(), p);
        }
    }
    out.ring = tx.open_table(META)?.get("ring")?.map(|v| v.value().to_owned());
    for row in tx.open_table(JOURNAL)?.iter()? {
        let (k, v) = row?;
        let (zone, n) = k.value();
        out.journals.entry(zone.to_owned()).or_default().push((n, v.value().to_vec()));
    }
    Ok(Ok(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyName;

    #[test]
    fn what_is_written_reads_back_after_a_reopen_and_forgetting_removes_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.fresh && loaded.serials.is_empty());
        let mut o = Overrides::default();
        o.set_policy(PolicyName::Priority);
        store
            .write(&[
                Put::Serial("example.".into(), 41),
                Put::Overrides("www.example.".into(), Some(o.clone())),
                Put::Pool("www.example.".into(), Some(SavedPool::default())),
                Put::Ring("127.0.0.1:7946 live\n".into()),
            ])
            .unwrap();
        store.write(&[Put::Serial("example.".into(), 42)]).unwrap();
        assert!(matches!(Store::open(dir.path()), Err(StateError::Store { .. })), "a store another holder has open is refused");
        drop(store);
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert!(!loaded.fresh);
        assert_eq!(loaded.serials["example."], 42);
        assert_eq!(loaded.overrides["www.example."], o);
        assert_eq!(loaded.pools["www.example."], SavedPool::default());
        assert_eq!(loaded.ring.as_deref(), Some("127.0.0.1:7946 live\n"));
        store.write(&[Put::Overrides("www.example.".into(), Some(Overrides::default())), Put::Pool("www.example.".into(), None)]).unwrap();
        drop(store);
        let (_, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.overrides.is_empty() && loaded.pools.is_empty(), "{loaded:?}");
    }

    #[test]
    fn journal_rows_are_kept_in_order_per_zone_and_forgotten_below_a_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let row = |zone: &str, n: u64, keep_from: u64| Put::Journal { zone: zone.into(), row: Some((n, vec![n as u8; 3])), keep_from };
        let rows: Vec<Put> = (0..12).map(|n| row("a.example.", n, n.saturating_sub(9))).chain([row("b.example.", 0, 0)]).collect();
        store.write(&rows).unwrap();
        store.write(&[Put::Journal { zone: "b.example.".into(), row: None, keep_from: 1 }]).unwrap();
        drop(store);
        let (store, loaded) = Store::open(dir.path()).unwrap();
        let numbers: Vec<u64> = loaded.journals["a.example."].iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, (2..12).collect::<Vec<_>>(), "row 10 forgot 0, row 11 forgot 1; numbers sort as numbers");
        assert_eq!(loaded.journals["a.example."][0].1, vec![2u8; 3]);
        assert!(!loaded.journals.contains_key("b.example."), "{:?}", loaded.journals.keys());
        // Keys order rows by number, and a put that only forgets shares its
        // key with the next row, which (forgetting at least as much) replaces it.
        assert!(row("c.", 9, 0).key() < row("c.", 10, 10).key());
        assert_eq!(Put::Journal { zone: "c.".into(), row: None, keep_from: 10 }.key(), row("c.", 10, 10).key());
        store.write(&[Put::Journal { zone: "a.example.".into(), row: None, keep_from: u64::MAX }]).unwrap();
        drop(store);
        assert!(Store::open(dir.path()).unwrap().1.journals.is_empty());
    }

    #[test]
    fn a_damaged_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a database at all, just text").unwrap();
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains(FILE), "{e}");
    }
}
