//! Durable raft state in `<data_dir>/raft/`: the vote, the log journal and the last snapshot,
//! behind openraft's storage-v2 traits ([`LogStore`] for the log and the vote,
//! [`StateMachineStore`] for the key-value state machine and its snapshots).
//!
//! Files (every one starts with an 8-byte magic naming its kind and format version):
//!
//! - `vote`: one record, the last vote. Replaced atomically (write `vote.tmp`, fsync, rename,
//!   fsync the directory) before `save_vote` returns, so a restarted node never votes twice in a
//!   term.
//! - `log`: an append-only journal of records: a batch of appended entries, a truncation, a
//!   purge, the committed log id. Appends are fsync'd before openraft is told they are flushed;
//!   when purges have made most of it dead, it is rewritten (`log.tmp`, fsync, rename).
//! - `snapshot`: the last snapshot, its metadata record then its data record
//!   ([`KvStore::to_snapshot`]), replaced atomically like the vote.
//! - `left`: present after this node left the cluster ([`mark_left`]); the next start removes
//!   the three files above and starts with no raft state, so the node joins afresh instead of
//!   acting on a membership that no longer has it.
//!
//! A record is `len: u64 LE`, `crc32(payload): u32 LE`, then `len` bytes of payload (MessagePack
//! for metadata, raw bytes for snapshot data). Loading the journal ignores a torn last record (a
//! short or checksum-failing record that reaches the end of the file, or a zero-filled tail) and
//! cuts it off; anything else that does not parse is a [`StoreError`] naming the file.
//!
//! The journal is written by one thread (`ioswarm-raft-log`) fed by a bounded queue, in the
//! order openraft issued the writes; appends that queue up while it syncs are written and
//! fsync'd together (group commit). The state machine lives in memory; a restart restores it
//! from the snapshot and openraft re-applies the committed entries after it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Cursor, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{LogReply, TypeConfig};
use crate::cluster::message::NodeId;
use crate::resp::kv::{KvLimits, KvRead, KvStore, KvValue};

const VOTE_FILE: &str = "vote";
const LOG_FILE: &str = "log";
const SNAPSHOT_FILE: &str = "snapshot";
/// Written after this node left the cluster: the next start begins with no raft state.
const LEFT_FILE: &str = "left";
/// Held (OS file lock) by the process using the directory.
const LOCK_FILE: &str = "lock";

const VOTE_MAGIC: &[u8; 8] = b"IOSWVOT1";
const LOG_MAGIC: &[u8; 8] = b"IOSWLOG1";
const SNAPSHOT_MAGIC: &[u8; 8] = b"IOSWSNP1";

/// Record header: payload length (u64 LE) and CRC-32 of the payload (u32 LE).
const HEADER: usize = 12;

/// Writes queued for the journal thread before `append` waits.
const WRITE_QUEUE: usize = 1024;
/// The journal is rewritten once it holds this many more records than twice the live entries.
const COMPACT_SLACK: u64 = 256;
/// Entries per record when the journal is rewritten.
const ENTRIES_PER_RECORD: usize = 256;

type RaftLogId = LogId<NodeId>;
type RaftEntry = Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, BasicNode>;
type Meta = SnapshotMeta<NodeId, BasicNode>;

/// The raft state in the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or the directory could not be read, written or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Another process holds the data directory.
    #[error("{} is in use by another process (its lock file is held)", path.display())]
    InUse {
        /// The lock file.
        path: PathBuf,
    },
    /// A file does not parse; it was not written by this format or was damaged.
    #[error("{}: corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where parsing stopped.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

// ---------------------------------------------------------------------------------------------
// Records and files.
// ---------------------------------------------------------------------------------------------

fn put_record(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`next_record`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
enum Next<'a> {
    /// A whole record with a good checksum, and the bytes it took.
    Record(&'a [u8], usize),
    /// The buffer ends inside the record.
    Short,
    /// The record is whole but its checksum fails; how many bytes it spans.
    BadChecksum(usize),
}

fn next_record(buf: &[u8]) -> Next<'_> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER>() else { return Next::Short };
    let (len, crc) = header.split_at(8);
    let len = u64::from_le_bytes(len.try_into().unwrap_or_default());
    let crc = u32::from_le_bytes(crc.try_into().unwrap_or_default());
    let Some(payload) = usize::try_from(len).ok().and_then(|len| rest.get(..len)) else { return Next::Short };
    if crc32fast::hash(payload) == crc {
        Next::Record(payload, HEADER + payload.len())
    } else {
        Next::BadChecksum(HEADER + payload.len())
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail (no maps with non-string keys are involved,
    // and MessagePack accepts any key anyway).
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

/// Writes `content` to `dir/name` atomically: a temporary file, fsync, rename, directory fsync.
fn write_atomic(dir: &Path, name: &str, content: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp)?;
    file.write_all(content)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, dir.join(name))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole file that is written atomically: magic, then exactly `records` records.
/// `Ok(None)` when it does not exist.
fn read_whole(path: &Path, magic: &[u8; 8], records: usize) -> Result<Option<Vec<Vec<u8>>>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let corrupt = |offset: usize, reason: &str| StoreError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if bytes.get(..magic.len()) != Some(magic.as_slice()) {
        return Err(corrupt(0, "not an ioswarm raft file of this kind or version"));
    }
    let mut pos = magic.len();
    let mut out = Vec::with_capacity(records);
    for _ in 0..records {
        match next_record(&bytes[pos..]) {
            Next::Record(payload, used) => {
                out.push(payload.to_vec());
                pos += used;
            }
            Next::Short => return Err(corrupt(pos, "file ends inside a record")),
            Next::BadChecksum(_) => return Err(corrupt(pos, "checksum mismatch")),
        }
    }
    if pos != bytes.len() {
        return Err(corrupt(pos, "unexpected bytes after the last record"));
    }
    Ok(Some(out))
}

fn decode_in<T: for<'de> Deserialize<'de>>(path: &Path, offset: usize, payload: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(payload).map_err(|e| StoreError::Corrupt {
        path: path.to_owned(),
        offset: offset as u64,
        reason: e.to_string(),
    })
}

/// Takes the data directory's lock (`dir/lock`, an advisory OS file lock held until the returned
/// file is dropped or the process exits), so that two processes never share one raft state.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(StoreError::InUse { path }),
        Err(fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

/// Records that this node left the cluster (see the module docs).
pub(super) fn mark_left(dir: &Path) -> Result<(), StoreError> {
    write_atomic(dir, LEFT_FILE, b"left\n").map_err(io_error(&dir.join(LEFT_FILE)))
}

// ---------------------------------------------------------------------------------------------
// The journal.
// ---------------------------------------------------------------------------------------------

/// One journal record as written.
#[derive(Serialize)]
enum RecordOut<'a> {
    Append(&'a [RaftEntry]),
    Truncate(u64),
    Purge(&'a RaftLogId),
    Committed(&'a Option<RaftLogId>),
}

/// One journal record as read back (same shape as [`RecordOut`]).
#[derive(Deserialize)]
enum RecordIn {
    Append(Vec<RaftEntry>),
    Truncate(u64),
    Purge(RaftLogId),
    Committed(Option<RaftLogId>),
}

/// The log as the journal describes it.
#[derive(Debug, Default)]
struct LogMem {
    entries: BTreeMap<u64, RaftEntry>,
    last_purged: Option<RaftLogId>,
}

impl LogMem {
    /// Entries from `first` on are replaced by `entries` (an append after a conflict).
    fn append(&mut self, entries: impl IntoIterator<Item = RaftEntry>) {
        let mut entries = entries.into_iter().peekable();
        if let Some(first) = entries.peek() {
            let _ = self.entries.split_off(&first.log_id.index);
        }
        for entry in entries {
            self.entries.insert(entry.log_id.index, entry);
        }
    }

    fn truncate(&mut self, since: u64) {
        let _ = self.entries.split_off(&since);
    }

    fn purge(&mut self, upto: RaftLogId) {
        self.entries = self.entries.split_off(&(upto.index + 1));
        if self.last_purged.is_none_or(|purged| purged < upto) {
            self.last_purged = Some(upto);
        }
    }

    fn last_log_id(&self) -> Option<RaftLogId> {
        self.entries.values().next_back().map(|e| e.log_id).or(self.last_purged)
    }
}

/// What loading the journal found.
#[derive(Debug, Default)]
struct Replayed {
    log: LogMem,
    committed: Option<RaftLogId>,
    records: u64,
}

/// Reads the journal at `path`; returns the state, the length of its valid prefix and whether a
/// torn tail was found after it.
fn replay_journal(path: &Path) -> Result<Option<(Replayed, u64, bool)>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    let corrupt =
        |offset: usize, reason: String| StoreError::Corrupt { path: path.to_owned(), offset: offset as u64, reason };
    if bytes.len() < LOG_MAGIC.len() {
        // Crashed while creating the file: nothing was ever acknowledged from it.
        return Ok(Some((Replayed::default(), 0, true)));
    }
    if bytes.get(..LOG_MAGIC.len()) != Some(LOG_MAGIC.as_slice()) {
        return Err(corrupt(0, "not an ioswarm raft log of this version".to_owned()));
    }
    let mut state = Replayed::default();
    let mut pos = LOG_MAGIC.len();
    let mut torn = false;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let payload = match next_record(rest) {
            Next::Record(payload, used) => {
                let payload_pos = pos;
                pos += used;
                (payload, payload_pos)
            }
            Next::Short => {
                torn = true;
                break;
            }
            Next::BadChecksum(used) if used == rest.len() => {
                torn = true;
                break;
            }
            Next::BadChecksum(_) if rest.iter().all(|&b| b == 0) => {
                torn = true;
                break;
            }
            Next::BadChecksum(_) => {
                return Err(corrupt(pos, "checksum mismatch before the end of the file".to_owned()));
            }
        };
        let (payload, at) = payload;
        if payload.is_empty() && rest.iter().all(|&b| b == 0) {
            // A zero-filled tail parses as an empty record with a zero checksum.
            pos = at;
            torn = true;
            break;
        }
        match rmp_serde::from_slice::<RecordIn>(payload).map_err(|e| corrupt(at, e.to_string()))? {
            RecordIn::Append(entries) => state.log.append(entries),
            RecordIn::Truncate(since) => state.log.truncate(since),
            RecordIn::Purge(upto) => state.log.purge(upto),
            RecordIn::Committed(committed) => state.committed = committed,
        }
        state.records += 1;
    }
    Ok(Some((state, pos as u64, torn)))
}

/// Work for the journal thread, in openraft's order.
enum WriteOp {
    /// Entries appended; signal `done` once they are on disk.
    Append { record: Vec<u8>, done: LogFlushed<TypeConfig> },
    /// A truncation, purge or commit mark. `sync`: synced before the batch is done (truncations
    /// and purges); otherwise durable with the next sync (the commit mark is advisory: a start
    /// that finds an older one re-applies less at once, and learns the rest from the leader), so
    /// it never adds an fsync to the write path.
    Record { record: Vec<u8>, sync: bool },
    /// Replace the journal with `image` (records after the magic) holding `records` records.
    Compact { image: Vec<u8>, records: u64 },
    /// Replace the vote file; answer once it is durable.
    Vote { content: Vec<u8>, done: oneshot::Sender<io::Result<()>> },
}

struct Journal {
    dir: PathBuf,
    file: File,
    /// Records in the file, shared with [`LogStore::purge`] to decide on compaction.
    records: Arc<AtomicU64>,
    /// Set after the first failed write: every later write fails too.
    failed: Option<String>,
}

impl Journal {
    fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some(reason) => Err(io::Error::other(format!("raft log unusable after an earlier error: {reason}"))),
            None => Ok(()),
        }
    }

    fn fail(&mut self, error: &io::Error) {
        tracing::error!(path = %self.path().display(), %error, "raft log write failed");
        self.failed.get_or_insert_with(|| error.to_string());
    }

    fn write(&mut self, record: &[u8]) -> io::Result<()> {
        self.check()?;
        let result = self.file.write_all(record);
        if let Err(error) = &result {
            self.fail(error);
        } else {
            self.records.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn sync(&mut self) -> io::Result<()> {
        self.check()?;
        let result = self.file.sync_data();
        if let Err(error) = &result {
            self.fail(error);
        }
        result
    }

    fn compact(&mut self, image: &[u8], records: u64) -> io::Result<()> {
        self.check()?;
        let mut content = Vec::with_capacity(LOG_MAGIC.len() + image.len());
        content.extend_from_slice(LOG_MAGIC);
        content.extend_from_slice(image);
        let result = write_atomic(&self.dir, LOG_FILE, &content)
            .and_then(|()| OpenOptions::new().append(true).open(self.path()));
        match result {
            Ok(file) => {
                self.file = file;
                self.records.store(records, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                self.fail(&error);
                Err(error)
            }
        }
    }

    /// Runs until every sender is gone, then syncs what is left.
    fn run(mut self, mut ops: mpsc::Receiver<WriteOp>) {
        let mut waiting: Vec<LogFlushed<TypeConfig>> = Vec::new();
        let mut dirty = false;
        while let Some(op) = ops.blocking_recv() {
            let mut next = Some(op);
            let mut batch = 0;
            while let Some(op) = next.take() {
                batch += 1;
                match op {
                    WriteOp::Append { record, done } => {
                        let _ = self.write(&record);
                        dirty = true;
                        waiting.push(done);
                    }
                    WriteOp::Record { record, sync } => {
                        let _ = self.write(&record);
                        dirty |= sync;
                    }
                    WriteOp::Compact { image, records } => {
                        self.flush(&mut waiting, &mut dirty);
                        let _ = self.compact(&image, records);
                    }
                    WriteOp::Vote { content, done } => {
                        self.flush(&mut waiting, &mut dirty);
                        let result = self.check().and_then(|()| write_atomic(&self.dir, VOTE_FILE, &content));
                        let _ = done.send(result);
                    }
                }
                // Take whatever else is queued before syncing, so it shares the fsync.
                if batch < WRITE_QUEUE {
                    next = ops.try_recv().ok();
                }
            }
            self.flush(&mut waiting, &mut dirty);
        }
        self.flush(&mut waiting, &mut dirty);
    }

    fn flush(&mut self, waiting: &mut Vec<LogFlushed<TypeConfig>>, dirty: &mut bool) {
        if !*dirty {
            return;
        }
        *dirty = false;
        let result = self.sync();
        for done in waiting.drain(..) {
            done.log_io_completed(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The log store.
// ---------------------------------------------------------------------------------------------

/// The log and the vote (openraft's `RaftLogStorage`).
pub(super) struct LogStore {
    log: Arc<Mutex<LogMem>>,
    writes: mpsc::Sender<WriteOp>,
    records: Arc<AtomicU64>,
    vote: Option<Vote<NodeId>>,
    committed: Option<RaftLogId>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("vote", &self.vote).field("committed", &self.committed).finish()
    }
}

/// A reader of the log for openraft's replication tasks.
#[derive(Debug, Clone)]
pub(super) struct LogReader {
    log: Arc<Mutex<LogMem>>,
}

fn read_range(log: &Mutex<LogMem>, range: impl RangeBounds<u64>) -> Vec<RaftEntry> {
    let start = match range.start_bound() {
        Bound::Included(&i) => Bound::Included(i),
        Bound::Excluded(&i) => Bound::Excluded(i),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => Bound::Included(i),
        Bound::Excluded(&i) => Bound::Excluded(i),
        Bound::Unbounded => Bound::Unbounded,
    };
    // An inverted range would make BTreeMap::range panic.
    let empty = match (start, end) {
        (Bound::Included(s), Bound::Included(e)) => s > e,
        (Bound::Included(s), Bound::Excluded(e))
        | (Bound::Excluded(s), Bound::Included(e))
        | (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        _ => false,
    };
    if empty {
        return Vec::new();
    }
    log.lock().entries.range((start, end)).map(|(_, entry)| entry.clone()).collect()
}

fn write_error(what: &str) -> StorageError<NodeId> {
    StorageIOError::write_logs(AnyError::error(what)).into()
}

impl LogStore {
    /// Loads the vote and the journal from `dir` (created when missing) and starts the journal
    /// thread. Returns the store, whether any state was found, and the thread's handle.
    pub(super) fn open(dir: &Path) -> Result<(LogStore, bool, std::thread::JoinHandle<()>), StoreError> {
        fs::create_dir_all(dir).map_err(io_error(dir))?;
        for name in [VOTE_FILE, LOG_FILE, SNAPSHOT_FILE] {
            let tmp = dir.join(format!("{name}.tmp"));
            match fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(&tmp)(e)),
            }
        }
        let left = dir.join(LEFT_FILE);
        if left.exists() {
            tracing::info!(dir = %dir.display(), "this node left the cluster earlier: starting with no raft state");
            for name in [VOTE_FILE, LOG_FILE, SNAPSHOT_FILE, LEFT_FILE] {
                let path = dir.join(name);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(&path)(e)),
                }
            }
            sync_dir(dir).map_err(io_error(dir))?;
        }
        let vote_path = dir.join(VOTE_FILE);
        let vote = match read_whole(&vote_path, VOTE_MAGIC, 1)? {
            Some(records) => Some(decode_in::<Vote<NodeId>>(&vote_path, VOTE_MAGIC.len(), &records[0])?),
            None => None,
        };
        let log_path = dir.join(LOG_FILE);
        let replayed = match replay_journal(&log_path)? {
            Some((state, valid, torn)) => {
                if torn {
                    tracing::warn!(path = %log_path.display(), valid, "raft log ends in a torn record; cutting it off");
                    if valid == 0 {
                        write_atomic(dir, LOG_FILE, LOG_MAGIC).map_err(io_error(&log_path))?;
                    } else {
                        let file = OpenOptions::new().write(true).open(&log_path).map_err(io_error(&log_path))?;
                        file.set_len(valid).and_then(|()| file.sync_all()).map_err(io_error(&log_path))?;
                    }
                }
                state
            }
            None => {
                write_atomic(dir, LOG_FILE, LOG_MAGIC).map_err(io_error(&log_path))?;
                Replayed::default()
            }
        };
        let had_state = vote.is_some() || replayed.log.last_log_id().is_some();
        let file = OpenOptions::new().append(true).open(&log_path).map_err(io_error(&log_path))?;
        let records = Arc::new(AtomicU64::new(replayed.records));
        let journal = Journal { dir: dir.to_owned(), file, records: records.clone(), failed: None };
        let (writes, ops) = mpsc::channel(WRITE_QUEUE);
        let thread = std::thread::Builder::new()
            .name("ioswarm-raft-log".into())
            .spawn(move || journal.run(ops))
            .map_err(io_error(&log_path))?;
        let store =
            LogStore { log: Arc::new(Mutex::new(replayed.log)), writes, records, vote, committed: replayed.committed };
        Ok((store, had_state, thread))
    }

    async fn queue(&self, op: WriteOp) -> Result<(), StorageError<NodeId>> {
        self.writes.send(op).await.map_err(|_| write_error("the raft log writer stopped"))
    }

    /// The journal content that describes the current log (after the magic), and its record
    /// count.
    fn image(&self) -> (Vec<u8>, u64) {
        let log = self.log.lock();
        let mut image = Vec::new();
        let mut records = 0;
        if let Some(purged) = &log.last_purged {
            put_record(&mut image, &encode(&RecordOut::Purge(purged)));
            records += 1;
        }
        if self.committed.is_some() {
            put_record(&mut image, &encode(&RecordOut::Committed(&self.committed)));
            records += 1;
        }
        let entries: Vec<RaftEntry> = log.entries.values().cloned().collect();
        for chunk in entries.chunks(ENTRIES_PER_RECORD) {
            put_record(&mut image, &encode(&RecordOut::Append(chunk)));
            records += 1;
        }
        (image, records)
    }
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<NodeId>> {
        Ok(read_range(&self.log, range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<RaftEntry>, StorageError<NodeId>> {
        Ok(read_range(&self.log, range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let log = self.log.lock();
        Ok(LogState { last_purged_log_id: log.last_purged, last_log_id: log.last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader { log: self.log.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut content = VOTE_MAGIC.to_vec();
        put_record(&mut content, &encode(vote));
        let (done, saved) = oneshot::channel();
        self.queue(WriteOp::Vote { content, done }).await?;
        match saved.await {
            Ok(Ok(())) => {
                self.vote = Some(*vote);
                Ok(())
            }
            Ok(Err(e)) => Err(StorageIOError::write_vote(AnyError::error(e)).into()),
            Err(_) => Err(StorageIOError::write_vote(AnyError::error("the raft log writer stopped")).into()),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn save_committed(&mut self, committed: Option<RaftLogId>) -> Result<(), StorageError<NodeId>> {
        self.committed = committed;
        let mut record = Vec::new();
        put_record(&mut record, &encode(&RecordOut::Committed(&committed)));
        self.queue(WriteOp::Record { record, sync: false }).await
    }

    async fn read_committed(&mut self) -> Result<Option<RaftLogId>, StorageError<NodeId>> {
        Ok(self.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<RaftEntry> = entries.into_iter().collect();
        if entries.is_empty() {
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        let mut record = Vec::new();
        put_record(&mut record, &encode(&RecordOut::Append(&entries)));
        self.log.lock().append(entries);
        self.queue(WriteOp::Append { record, done: callback }).await
    }

    async fn truncate(&mut self, log_id: RaftLogId) -> Result<(), StorageError<NodeId>> {
        self.log.lock().truncate(log_id.index);
        let mut record = Vec::new();
        put_record(&mut record, &encode(&RecordOut::Truncate(log_id.index)));
        self.queue(WriteOp::Record { record, sync: true }).await
    }

    async fn purge(&mut self, log_id: RaftLogId) -> Result<(), StorageError<NodeId>> {
        let live = {
            let mut log = self.log.lock();
            log.purge(log_id);
            log.entries.len() as u64
        };
        if self.records.load(Ordering::Relaxed) > 2 * live + COMPACT_SLACK {
            let (image, records) = self.image();
            return self.queue(WriteOp::Compact { image, records }).await;
        }
        let mut record = Vec::new();
        put_record(&mut record, &encode(&RecordOut::Purge(&log_id)));
        self.queue(WriteOp::Record { record, sync: true }).await
    }
}

// ---------------------------------------------------------------------------------------------
// The state machine.
// ---------------------------------------------------------------------------------------------

/// The applied state: what the log up to `last_applied` built.
#[derive(Debug)]
struct SmState {
    last_applied: Option<RaftLogId>,
    membership: Membership,
    kv: KvStore,
}

#[derive(Debug)]
struct StoredSnapshot {
    meta: Meta,
    data: Vec<u8>,
}

/// The state machine shared by openraft's state machine worker and the node's read path.
#[derive(Debug)]
pub(super) struct SmShared {
    state: RwLock<SmState>,
    current: Mutex<Option<Arc<StoredSnapshot>>>,
    dir: PathBuf,
    limits: KvLimits,
    /// Tells snapshots built at the same log id apart.
    built: AtomicU64,
}

impl SmShared {
    /// Serves a read from the applied state (the caller made it linearizable).
    pub(super) fn read(&self, read: &KvRead) -> KvValue {
        self.state.read().kv.read(read)
    }

    /// The applied state's key-value store, cloned (tests).
    #[cfg(test)]
    pub(super) fn kv(&self) -> KvStore {
        self.state.read().kv.clone()
    }

    /// Writes `snapshot` to the snapshot file (durably, off the async runtime).
    async fn save(self: &Arc<Self>, snapshot: &Arc<StoredSnapshot>) -> Result<(), StorageError<NodeId>> {
        let (shared, to_save) = (self.clone(), snapshot.clone());
        let written = tokio::task::spawn_blocking(move || {
            let mut content = SNAPSHOT_MAGIC.to_vec();
            put_record(&mut content, &encode(&to_save.meta));
            put_record(&mut content, &to_save.data);
            write_atomic(&shared.dir, SNAPSHOT_FILE, &content).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|written| written);
        written.map_err(|e| StorageIOError::write_snapshot(Some(snapshot.meta.signature()), AnyError::error(e)).into())
    }
}

/// The key-value state machine and its snapshots (openraft's `RaftStateMachine`).
#[derive(Debug, Clone)]
pub(super) struct StateMachineStore {
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// Restores the state machine from the snapshot in `dir`, if there is one.
    pub(super) fn open(dir: &Path, limits: KvLimits) -> Result<(StateMachineStore, bool), StoreError> {
        let path = dir.join(SNAPSHOT_FILE);
        let mut state = SmState { last_applied: None, membership: Membership::default(), kv: KvStore::new(limits) };
        let mut current = None;
        if let Some(records) = read_whole(&path, SNAPSHOT_MAGIC, 2)? {
            let meta: Meta = decode_in(&path, SNAPSHOT_MAGIC.len(), &records[0])?;
            let data = records[1].clone();
            let mut kv = KvStore::from_snapshot(&data).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                offset: (SNAPSHOT_MAGIC.len() + HEADER + records[0].len()) as u64,
                reason: e.to_string(),
            })?;
            kv.set_limits(limits);
            state = SmState { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), kv };
            current = Some(Arc::new(StoredSnapshot { meta, data }));
        }
        let found = current.is_some();
        let shared = SmShared {
            state: RwLock::new(state),
            current: Mutex::new(current),
            dir: dir.to_owned(),
            limits,
            built: AtomicU64::new(0),
        };
        Ok((StateMachineStore { shared: Arc::new(shared) }, found))
    }

    pub(super) fn shared(&self) -> Arc<SmShared> {
        self.shared.clone()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (last_applied, membership, data) = {
            let state = self.shared.state.read();
            (state.last_applied, state.membership.clone(), state.kv.to_snapshot())
        };
        let built = self.shared.built.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{built}", id.leader_id.term, id.index),
            None => format!("0-0-{built}"),
        };
        let meta = Meta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let stored = Arc::new(StoredSnapshot { meta, data });
        self.shared.save(&stored).await?;
        *self.shared.current.lock() = Some(stored.clone());
        tracing::info!(snapshot = %stored.meta.snapshot_id, bytes = stored.data.len(), "raft snapshot saved");
        Ok(Snapshot { meta: stored.meta.clone(), snapshot: Box::new(Cursor::new(stored.data.clone())) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<RaftLogId>, Membership), StorageError<NodeId>> {
        let state = self.shared.state.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<LogReply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = RaftEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.shared.state.write();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let reply = match entry.payload {
                EntryPayload::Blank => None,
                EntryPayload::Normal(batch) => Some(batch.0.iter().map(|command| state.kv.apply(command)).collect()),
                EntryPayload::Membership(membership) => {
                    state.membership = Membership::new(Some(entry.log_id), membership);
                    None
                }
            };
            replies.push(LogReply(reply));
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let mut kv = KvStore::from_snapshot(&data).map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(e)))
        })?;
        kv.set_limits(self.shared.limits);
        let stored = Arc::new(StoredSnapshot { meta: meta.clone(), data });
        self.shared.save(&stored).await?;
        {
            let mut state = self.shared.state.write();
            *state = SmState { last_applied: meta.last_log_id, membership: meta.last_membership.clone(), kv };
        }
        *self.shared.current.lock() = Some(stored);
        tracing::info!(snapshot = %meta.snapshot_id, "raft snapshot installed from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let current = self.shared.current.lock().clone();
        Ok(current.map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn record(out: &RecordOut<'_>) -> Vec<u8> {
        let mut bytes = Vec::new();
        put_record(&mut bytes, &encode(out));
        bytes
    }

    /// Journal record bytes, as the log store writes them.
    pub(in crate::cluster::raft) fn append_record(entries: &[RaftEntry]) -> Vec<u8> {
        record(&RecordOut::Append(entries))
    }

    pub(in crate::cluster::raft) fn truncate_record(since: u64) -> Vec<u8> {
        record(&RecordOut::Truncate(since))
    }

    pub(in crate::cluster::raft) fn purge_record(upto: RaftLogId) -> Vec<u8> {
        record(&RecordOut::Purge(&upto))
    }

    /// How many records the journal at `path` holds.
    pub(in crate::cluster::raft) fn journal_records(path: &Path) -> u64 {
        replay_journal(path).expect("journal").map_or(0, |(state, _, _)| state.records)
    }

    pub(in crate::cluster::raft) fn committed_record(committed: Option<RaftLogId>) -> Vec<u8> {
        record(&RecordOut::Committed(&committed))
    }

    #[test]
    fn records_split_short_and_bad_checksums() {
        let mut buf = Vec::new();
        put_record(&mut buf, b"hello");
        put_record(&mut buf, b"");
        assert_eq!(next_record(&buf), Next::Record(b"hello", HEADER + 5));
        assert_eq!(next_record(&buf[HEADER + 5..]), Next::Record(b"", HEADER));
        assert_eq!(next_record(&buf[..HEADER + 4]), Next::Short);
        assert_eq!(next_record(&buf[..3]), Next::Short);
        let mut bad = buf.clone();
        bad[HEADER] ^= 1;
        assert_eq!(next_record(&bad), Next::BadChecksum(HEADER + 5));
        // A forged length far beyond the buffer is "short", never an allocation.
        let mut huge = vec![0xff; 8];
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(next_record(&huge), Next::Short);
    }
}
