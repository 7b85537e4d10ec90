//! The upload worker: stores finished spool files one after another on its own thread, so
//! the consumer keeps draining librdkafka's queue during an upload (a synchronous upload let
//! the prefetch queue fill, which made peak RSS grow with run length).

use crate::archive::layout::ObjectEntry;
use crate::archive::{ObjectStore, PutOutcome};
use anyhow::{bail, Context, Result};
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

/// Objects queued for the upload worker before `Uploader::send` blocks (back-pressure). Each
/// is a spool file on disk, not memory.
pub const UPLOAD_QUEUE: usize = 4;

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
    /// (objects not yet stored, worker gone)
    state: Mutex<(usize, bool)>,
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
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }
    /// Blocks until every queued object is stored (or the worker has stopped).
    pub fn wait_idle(&self) {
        let mut st = self.state.lock().unwrap();
        while st.0 > 0 && !st.1 {
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

/// The worker's loop: store each queued object; after the first failure, drop the rest.
pub fn worker(
    store: &dyn ObjectStore,
    queue: Receiver<Pending>,
    results: Sender<Stored>,
    gate: Arc<UploadGate>,
) {
    let _close = CloseOnDrop(gate.clone());
    let mut failed = false;
    for p in queue {
        if !failed {
            let r = store
                .put_file_if_absent(&p.key, &p.file)
                .with_context(|| format!("storing an object in {}", store.describe()));
            failed = r.is_err();
            // Sent before `done`, so a caller that waited for the gate finds the result. When
            // the run has already failed (nobody receives), the rest is not worth storing.
            failed |= results.send(r.map(|o| (p.entry, o))).is_err();
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

/// The worker's side: what `worker` takes.
pub struct WorkerEnd {
    pub queue: Receiver<Pending>,
    pub results: Sender<Stored>,
    pub gate: Arc<UploadGate>,
}

/// A connected uploader and worker end.
pub fn channel() -> (Uploader, WorkerEnd) {
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
            queue: queue_rx,
            results: results_tx,
            gate,
        },
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
