//! The archive: an object store behind a small trait, chosen by URL (s3:// or a local dir),
//! its layout (`layout`: keys, folders, manifests) that every command shares, and its catalog
//! (`catalog`: the one module that reads and writes heads, markers, manifests and epochs).

pub mod catalog;
pub mod layout;
pub mod local;
pub mod s3;

pub use layout::Compression;

use crate::config::{ArchiveLocation, ArchiveSettings};
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the archive root (the URL's bucket and prefix, or directory).
    pub key: String,
    pub size: u64,
}

/// What a conditional put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    /// The key existed; nothing was written (objects are immutable).
    AlreadyExists,
}

/// Errors a caller branches on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} not found")]
    NotFound(String),
}

/// A minimal object store. Keys are relative, `/`-separated paths.
pub trait ObjectStore: Send + Sync {
    /// Where this store points, for messages (no secrets).
    fn describe(&self) -> String;
    /// Where its credentials came from, for -v (never the values).
    fn credential_source(&self) -> Option<String> {
        None
    }
    /// Fails with a clear error when the store cannot be reached or written (missing bucket,
    /// wrong credentials, missing directory).
    fn check(&self) -> Result<()>;
    /// Stores the contents of `path` under `key` unless `key` exists. Durable on return. The
    /// file must not change afterwards: a local store on its filesystem links it in place.
    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome>;
    /// Whether [`ObjectStore::put_file_if_absent`] would keep `path` itself as the object (a
    /// local store on the file's filesystem): a writer of a large file may then start its
    /// bytes to disk while it writes the rest, and the sync on storing has little left to do.
    fn keeps_file(&self, _path: &Path) -> bool {
        false
    }
    /// Stores `data` under `key` unless `key` exists.
    fn put_bytes_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome>;
    /// Stores `data` under `key`, replacing it (only for batchlayer's own small state files,
    /// never for data objects). A reader sees the old or the new content, never a mix.
    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Streams the object into `w`; `StoreError::NotFound` when it does not exist.
    fn get_into(&self, key: &str, w: &mut (dyn Write + Send)) -> Result<u64>;
    /// All objects whose key starts with `prefix`, sorted by key.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>>;
    /// The names of the "folders" right below `prefix` (which ends with `/`), sorted.
    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>>;
    /// The objects right inside the folder `prefix` (which ends with `/`), not in its
    /// subfolders, sorted. What the catalog's folders (markers, a day's manifests) are read
    /// with: an S3 server answers it from that folder alone (a delimiter listing), where a
    /// plain prefix listing may cost a walk of the whole bucket on some servers.
    fn list_folder(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut v = self.list(prefix)?;
        v.retain(|o| !o.key[prefix.len().min(o.key.len())..].contains('/'));
        Ok(v)
    }
    /// Removes an object; removing a missing one is not an error.
    fn delete(&self, key: &str) -> Result<()>;
}

/// Opens the store the settings point at.
pub fn open(settings: &ArchiveSettings) -> Result<Box<dyn ObjectStore>> {
    Ok(match &settings.location {
        ArchiveLocation::Local(dir) => Box::new(local::LocalStore::new(dir.clone())),
        ArchiveLocation::S3 { .. } => {
            Box::new(s3::S3Store::new(&settings.location)?.with_retry(settings.retry))
        }
    })
}

/// Downloads an object to a temp file (bounded memory) and checks its sha256 when known.
pub fn download(
    store: &dyn ObjectStore,
    key: &str,
    expected_sha256: Option<&str>,
) -> Result<std::fs::File> {
    let mut file = tempfile::tempfile().context("creating a temp file for the download")?;
    // Hashed as it arrives: one pass over the bytes.
    let mut w =
        crate::util::Tally::hashing(std::io::BufWriter::with_capacity(256 << 10, &mut file));
    store.get_into(key, &mut w)?;
    let (got, mut inner) = w.finish();
    inner.flush()?;
    drop(inner);
    if let Some(want) = expected_sha256 {
        if got != want {
            bail!("object {key} is corrupt: sha256 {got} does not match the manifest's {want}");
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// Streams an object through an in-process pipe ([`crate::util::byte_channel`]): a thread of
/// `scope` runs the GET into it, hashing the bytes on the way; the reader gets them as they
/// arrive (memory stays bounded: four 256 KiB buffers wait at most, seven exist at most). The thread's result is
/// the object's sha256 once all of it went through.
pub fn stream<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    store: &'scope dyn ObjectStore,
    key: &'scope str,
) -> Result<(
    crate::util::ChunkReader,
    std::thread::ScopedJoinHandle<'scope, Result<String>>,
)> {
    let (writer, reader) = crate::util::byte_channel(256 << 10, 4);
    let getter = scope.spawn(move || {
        let mut w = crate::util::Tally::hashing(writer);
        store.get_into(key, &mut w)?;
        let (sha, mut inner) = w.finish();
        inner.flush()?;
        Ok(sha)
    });
    Ok((reader, getter))
}

/// What a streamed object's download ([`stream`]'s thread, joined: `got`) says once the
/// reading side is done: a download that failed, or bytes that are not the manifest's
/// (`want`), is the error to report; None when neither. A download cut short because the
/// reading side stopped first tells nothing by itself: when the reading side stopped on an
/// error (`failed`), the object is read once more, so that a corrupt object is named corrupt
/// rather than by what its bytes made the decoding say.
pub fn stream_verdict(
    got: Result<String>,
    store: &dyn ObjectStore,
    key: &str,
    want: Option<&str>,
    failed: bool,
) -> Option<anyhow::Error> {
    match got {
        Err(e) if !is_broken_pipe(&e) => Some(e),
        Ok(sha) => want.filter(|w| *w != sha).map(|w| {
            anyhow::anyhow!(
                "object {key} is corrupt: sha256 {sha} does not match the manifest's {w}"
            )
        }),
        Err(_) if failed => want
            .map(|w| download(store, key, Some(w)))
            .and_then(Result::err),
        Err(_) => None,
    }
}

/// True when an error is only a closed pipe (the reading side stopped first, for its own
/// reason, which is the one to report).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A reader that decompresses an archived object by its compression.
pub fn decoder<R: std::io::Read + Send + 'static>(
    input: R,
    c: Compression,
) -> Result<Box<dyn BufRead + Send>> {
    buffered_decoder(BufReader::with_capacity(256 << 10, input), c)
}

/// [`decoder`] of a reader that has its own buffers (a [`stream`]'s): the decompressor reads
/// them in place, with no copy into a buffer of its own.
pub fn buffered_decoder<R: BufRead + Send + 'static>(
    f: R,
    c: Compression,
) -> Result<Box<dyn BufRead + Send>> {
    Ok(match c {
        Compression::None => Box::new(f),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            128 << 10,
            flate2::bufread::MultiGzDecoder::new(f),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            128 << 10,
            zstd::stream::read::Decoder::with_buffer(f)?,
        )),
    })
}

#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    //! One suite every `ObjectStore` impl must pass; the integration tests run it against S3.
    use super::*;

    pub fn run(store: &dyn ObjectStore) {
        store.check().expect("check");
        assert!(
            store.list("conf/").unwrap().is_empty(),
            "fresh store must be empty"
        );
        assert_eq!(
            store
                .put_bytes_if_absent("conf/a/one.log", b"first")
                .unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store
                .put_bytes_if_absent("conf/a/one.log", b"second")
                .unwrap(),
            PutOutcome::AlreadyExists
        );
        let mut got = Vec::new();
        store.get_into("conf/a/one.log", &mut got).unwrap();
        assert_eq!(
            got, b"first",
            "an existing object must never be overwritten"
        );

        let tmp = tempfile::NamedTempFile::new().unwrap();
        let big: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(tmp.path(), &big).unwrap();
        assert_eq!(
            store
                .put_file_if_absent("conf/b/big.bin", tmp.path())
                .unwrap(),
            PutOutcome::Created
        );
        assert_eq!(
            store
                .put_file_if_absent("conf/b/big.bin", tmp.path())
                .unwrap(),
            PutOutcome::AlreadyExists
        );
        let mut got = Vec::new();
        assert_eq!(
            store.get_into("conf/b/big.bin", &mut got).unwrap(),
            big.len() as u64
        );
        assert!(got == big, "large object round trip differs");

        let list = store.list("conf/").unwrap();
        let keys: Vec<_> = list.iter().map(|m| (m.key.as_str(), m.size)).collect();
        assert_eq!(
            keys,
            vec![("conf/a/one.log", 5), ("conf/b/big.bin", big.len() as u64)]
        );
        assert_eq!(store.list("conf/a/").unwrap().len(), 1);
        assert!(store.list("nothing/").unwrap().is_empty());
        assert_eq!(store.list_dirs("conf/").unwrap(), vec!["a", "b"]);
        assert!(store.list_dirs("nothing/").unwrap().is_empty());

        let err = store.get_into("conf/missing", &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err.downcast_ref::<StoreError>(),
                Some(StoreError::NotFound(_))
            ),
            "missing object must be NotFound, got {err:#}"
        );
        store.delete("conf/a/one.log").unwrap();
        store.delete("conf/a/one.log").unwrap();
        assert_eq!(store.list("conf/").unwrap().len(), 1);

        // State files are replaced whole.
        store.put_bytes("conf/state.json", b"one").unwrap();
        store.put_bytes("conf/state.json", b"two, longer").unwrap();
        let mut got = Vec::new();
        store.get_into("conf/state.json", &mut got).unwrap();
        assert_eq!(got, b"two, longer");

        // A streamed download whose reader stops first (a bad record, a failed load) ends in
        // a broken pipe, which the callers tell from a download that failed: the object is
        // larger than what waits between the two sides.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        store.put_bytes("conf-stream/big.bin", &big).unwrap();
        std::thread::scope(|scope| {
            let (mut reader, getter) = stream(scope, store, "conf-stream/big.bin").unwrap();
            let mut first = [0u8; 16];
            std::io::Read::read_exact(&mut reader, &mut first).unwrap();
            assert_eq!(&first[..], &big[..16]);
            drop(reader);
            let e = getter
                .join()
                .unwrap()
                .expect_err("the download goes on with no reader");
            assert!(is_broken_pipe(&e), "not a broken pipe: {e:#}");
        });
        // Read whole, it is the object, and its sha256 is given.
        std::thread::scope(|scope| {
            let (mut reader, getter) = stream(scope, store, "conf-stream/big.bin").unwrap();
            let mut all = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut all).unwrap();
            assert!(all == big, "streamed bytes differ");
            let sha = getter.join().unwrap().unwrap();
            use sha2::Digest as _;
            assert_eq!(sha, hex::encode(sha2::Sha256::digest(&big)));
        });
        store.delete("conf-stream/big.bin").unwrap();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn local_store_conforms() {
        let dir = tempfile::tempdir().unwrap();
        super::conformance::run(&super::local::LocalStore::new(dir.path().to_path_buf()));
    }

    #[test]
    fn a_local_store_links_a_file_of_its_filesystem_and_copies_a_symlinks_target() {
        use super::{ObjectStore as _, PutOutcome};
        let dir = tempfile::tempdir().unwrap();
        let store = super::local::LocalStore::new(dir.path().join("store"));
        // A file beside the store: linked, readable by others, and the object outlives it.
        let src = dir.path().join("spool");
        std::fs::write(&src, b"linked bytes").unwrap();
        // Kept as it is (before the store's folder exists, too): a writer may sync it early.
        #[cfg(unix)]
        assert!(store.keeps_file(&src));
        assert!(!store.keeps_file(&dir.path().join("missing")));
        assert_eq!(
            store.put_file_if_absent("a/one", &src).unwrap(),
            PutOutcome::Created
        );
        let object = dir.path().join("store/a/one");
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
            let m = std::fs::metadata(&object).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o644);
            assert_eq!(m.nlink(), 2, "linked, not copied");
        }
        std::fs::remove_file(&src).unwrap();
        let mut got = Vec::new();
        store.get_into("a/one", &mut got).unwrap();
        assert_eq!(got, b"linked bytes");
        // Never replaced: a second put of other bytes finds it.
        std::fs::write(&src, b"other").unwrap();
        assert_eq!(
            store.put_file_if_absent("a/one", &src).unwrap(),
            PutOutcome::AlreadyExists
        );
        got.clear();
        store.get_into("a/one", &mut got).unwrap();
        assert_eq!(got, b"linked bytes");
        // A symlink is not linked itself: its target's bytes are stored, as a file.
        #[cfg(unix)]
        {
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&src, &link).unwrap();
            assert!(!store.keeps_file(&link), "a symlink is copied, not kept");
            assert_eq!(
                store.put_file_if_absent("a/two", &link).unwrap(),
                PutOutcome::Created
            );
            let m = std::fs::symlink_metadata(dir.path().join("store/a/two")).unwrap();
            assert!(m.file_type().is_file(), "{m:?}");
            std::fs::remove_file(&src).unwrap();
            got.clear();
            store.get_into("a/two", &mut got).unwrap();
            assert_eq!(got, b"other");
        }
    }
}
