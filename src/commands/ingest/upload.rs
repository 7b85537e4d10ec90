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
/// `close_and_wait` sees the channel close.
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
                .with_context(|| format!("storing an object in {}", store.describe()));
            failed = r.is_err();
            // Sent before `done`, so a caller that waited for the gate finds the result. When
            // the run has already failed (nobody receives), the rest is not worth storing.
            failed |= results.send(r.map(|o| (p.entry, o))).is_err();
            if failed {
                any_failed.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        // After a failure the rest is dropped unstored: the run fails and commits nothing.
        drop(p.file);
        gate.done();
    }
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

    /// Closes the queue and waits for every result.
    pub fn close_and_wait(&mut self) -> Vec<Stored> {
        self.queue = None;
        std::iter::from_fn(|| self.results.recv().ok()).collect()
    }
}
