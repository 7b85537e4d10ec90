//! The upload workers: store finished spool files on their own threads, so the consumer keeps
//! draining librdkafka's queue during an upload (else the prefetch queue fills and peak RSS
//! grows with run length). `UPLOAD_WORKERS` threads store at once.

use crate::archive::layout::ObjectEntry;
use crate::archive::{ObjectStore, PutOutcome};
use anyhow::{bail, Context, Result};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

/// Objects queued for the upload worker before `Uploader::send` blocks (back-pressure). Each
/// is a spool file on disk, not memory.
pub const UPLOAD_QUEUE: usize = 4;

/// Objects stored at once. A run's last objects are finished together when every partition
/// reaches its end, so they are stored side by side. Each object up to 64 MiB goes up as
/// one PUT streamed from its spool file, which holds no copy of it in memory, so the workers
/// keep peak RSS flat (bench/notes.md); larger ones hold one 5 MiB part each.
pub const UPLOAD_WORKERS: usize = 3;

/// A finished spool file waiting to be stored under its key.
pub struct Pending {
    pub key: String,
    pub file: tempfile::TempPath,
    pub entry: ObjectEntry,
}

pub type Stored = Result<(ObjectEntry, PutOutcome)>;

/// Counts objects queued or uploading, so a group revocation can wait until they are stored.
#[derive(Default)]
pub struct UploadGate {
    /// (objects not yet stored, workers gone)
    state: Mutex<(usize, usize)>,
    changed: Condvar,
}

impl UploadGate {
    fn add(&self) {
        self.state.lock().unwrap().0 += 1;
    }
    fn done(&self) {
        let mut st = self.state.lock().unwrap();
        st.0 = st.0.saturating_sub(1);
        self.changed.notify_all();
    }
    fn close(&self) {
        self.state.lock().unwrap().1 += 1;
        self.changed.notify_all();
    }
    /// Blocks until every queued object is stored (or every worker has stopped).
    pub fn wait_idle(&self) {
        let mut st = self.state.lock().unwrap();
        while st.0 > 0 && st.1 < UPLOAD_WORKERS {
            st = self.changed.wait(st).unwrap();
        }
    }
}

/// Closes the gate when the worker ends, even by panic, so no revocation waits forever.
struct CloseOnDrop(Arc<UploadGate>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// A worker's loop: store each queued object; after the first failure (of any worker), drop
/// the rest.
/// Each worker has its own `results` sender: when the last one ends, the uploader's
/// `next_result` sees the channel close.
pub fn worker(store: &dyn ObjectStore, end: &WorkerEnd, results: Sender<Stored>) {
    let WorkerEnd {
        queue,
        gate,
        failed: any_failed,
    } = end;
    let _close = CloseOnDrop(gate.clone());
    loop {
        // The lock is held only while taking the next object, not while storing it.
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(p) = next else { break };
        let mut failed = any_failed.load(std::sync::atomic::Ordering::SeqCst);
        if !failed {
            let r = store
                .put_file_if_absent(&p.key, &p.file)
                .with_context(|| format!("storing an object in {}", store.describe()))
                .and_then(|o| match o {
                    PutOutcome::Created => Ok((p.entry.clone(), o)),
                    PutOutcome::AlreadyExists => existing(store, &p).map(|e| (e, o)),
                });
            failed = r.is_err();
            // Sent before `done`, so a caller that waited for the gate finds the result. When
            // the run has already failed (nobody receives), the rest is not worth storing.
            failed |= results.send(r).is_err();
            if failed {
                any_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // After a failure the rest is dropped unstored: the run fails and commits nothing.
        drop(p.file);
        gate.done();
    }
}

/// The object stored under `p.key` before this run's put: the same name means the same
/// offsets, but its bytes may differ (another compression or level, another version). Its
/// entry describes the stored object (sha256, size) when it holds the same records as this
/// run's file, record for record; a stored object with other records fails the run.
fn existing(store: &dyn ObjectStore, p: &Pending) -> Result<ObjectEntry> {
    use std::io::{Seek, SeekFrom};
    let mut stored = crate::archive::download(store, &p.key, None)?;
    let sha256 = crate::util::sha256_of(&mut stored)?;
    let bytes = stored.seek(SeekFrom::End(0))?;
    let mut entry = p.entry.clone();
    if sha256 == entry.sha256 {
        return Ok(entry);
    }
    stored.seek(SeekFrom::Start(0))?;
    let c = entry.compression;
    let mut theirs = crate::records::FrameReader::new(crate::archive::decoder(stored, c)?);
    let ours = std::fs::File::open(&p.file).context("reopening the spool file")?;
    let mut ours = crate::records::FrameReader::new(crate::archive::decoder(ours, c)?);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    loop {
        let more_theirs = theirs
            .next_into(&mut a)
            .with_context(|| format!("reading the stored object {}", p.key))?;
        let more_ours = ours.next_into(&mut b)?;
        if more_theirs != more_ours || a != b {
            bail!(
                "object {} already exists in {} and holds other records than this run read for offsets {}..{} (they differ at record {}); nothing was committed: check what wrote it (another topic of the same name, an archive shared by two clusters)",
                p.key,
                store.describe(),
                entry.first_offset,
                entry.last_offset,
                n + 1
            );
        }
        if !more_ours {
            break;
        }
        n += 1;
    }
    entry.sha256 = sha256;
    entry.bytes = bytes;
    Ok(entry)
}

/// The consumer's side of the upload worker.
pub struct Uploader {
    queue: Option<SyncSender<Pending>>,
    results: Receiver<Stored>,
    pub gate: Arc<UploadGate>,
}

/// The workers' side, shared by them: what `worker` takes.
pub struct WorkerEnd {
    pub queue: Mutex<Receiver<Pending>>,
    pub gate: Arc<UploadGate>,
    pub failed: std::sync::atomic::AtomicBool,
}

/// A connected uploader, the workers' end, and the sender of results (one clone per worker).
pub fn channel() -> (Uploader, WorkerEnd, Sender<Stored>) {
    let gate = Arc::new(UploadGate::default());
    let (queue_tx, queue_rx) = std::sync::mpsc::sync_channel(UPLOAD_QUEUE);
    let (results_tx, results_rx) = std::sync::mpsc::channel();
    (
        Uploader {
            queue: Some(queue_tx),
            results: results_rx,
            gate: gate.clone(),
        },
        WorkerEnd {
            queue: Mutex::new(queue_rx),
            gate,
            failed: Default::default(),
        },
        results_tx,
    )
}

impl Uploader {
    /// Results of uploads finished so far (never blocks).
    pub fn finished(&self) -> Vec<Stored> {
        std::iter::from_fn(|| self.results.try_recv().ok()).collect()
    }

    /// Queues an object for the worker (blocks while the queue is full). Fails when the
    /// worker is gone.
    pub fn send(&mut self, p: Pending) -> Result<()> {
        let queue = self.queue.as_ref().expect("uploader open");
        self.gate.add();
        if queue.send(p).is_err() {
            self.gate.done();
            bail!("the upload worker stopped unexpectedly");
        }
        Ok(())
    }

    /// Queues an object unless the queue is full (then gives it back). Fails when the worker
    /// is gone.
    pub fn try_send(&mut self, p: Pending) -> Result<Option<Pending>> {
        let queue = self.queue.as_ref().expect("uploader open");
        self.gate.add();
        match queue.try_send(p) {
            Ok(()) => Ok(None),
            Err(std::sync::mpsc::TrySendError::Full(p)) => {
                self.gate.done();
                Ok(Some(p))
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                self.gate.done();
                bail!("the upload worker stopped unexpectedly")
            }
        }
    }

    /// Closes the queue: the workers end once it is drained.
    pub fn close(&mut self) {
        self.queue = None;
    }

    /// The next result, waiting at most `wait`: `Err(true)` when every worker has ended (no
    /// more results), `Err(false)` when none came in time.
    pub fn next_result(&self, wait: std::time::Duration) -> std::result::Result<Stored, bool> {
        use std::sync::mpsc::RecvTimeoutError;
        self.results.recv_timeout(wait).map_err(|e| match e {
            RecvTimeoutError::Disconnected => true,
            RecvTimeoutError::Timeout => false,
        })
    }
}
