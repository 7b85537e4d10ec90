//! Local-directory object store: atomic, never-overwriting puts via hard links.

use super::{ObjectMeta, ObjectStore, PutOutcome, StoreError};
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("invalid object key {key:?}");
        }
        Ok(self.root.join(key))
    }

    /// A temp file (hidden from listings) in the directory `dest` goes into, created if needed.
    fn temp_beside(&self, dest: &Path) -> Result<(PathBuf, tempfile::NamedTempFile)> {
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .with_context(|| format!("creating temp file in {}", dir.display()))?;
        Ok((dir, tmp))
    }

    /// Writes via a temp file in the target directory and links it into place, so a reader
    /// never sees a partial object and an existing object is never replaced.
    fn put_with(
        &self,
        key: &str,
        fill: &mut dyn FnMut(&mut fs::File) -> Result<()>,
    ) -> Result<PutOutcome> {
        let dest = self.path(key)?;
        if dest.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let (dir, mut tmp) = self.temp_beside(&dest)?;
        fill(tmp.as_file_mut()).with_context(|| format!("writing {}", dest.display()))?;
        #[cfg(unix)]
        {
            // Archived objects are readable by the operator's tools, like any file they'd copy in.
            use std::os::unix::fs::PermissionsExt;
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o644))?;
        }
        tmp.as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", dest.display()))?;
        let outcome = match fs::hard_link(tmp.path(), &dest) {
            Ok(()) => PutOutcome::Created,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => PutOutcome::AlreadyExists,
            Err(e) => return Err(e).with_context(|| format!("storing {}", dest.display())),
        };
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(outcome)
    }
}

impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn keeps_file(&self, path: &Path) -> bool {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            // The root, or the nearest folder above it that exists (the root is made on the
            // first put).
            let root = self.root.ancestors().find_map(|a| fs::metadata(a).ok());
            let file = fs::symlink_metadata(path);
            matches!((file, root), (Ok(f), Some(r)) if f.file_type().is_file() && f.dev() == r.dev())
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            false
        }
    }

    fn check(&self) -> Result<()> {
        fs::create_dir_all(&self.root)
            .with_context(|| format!("archive directory {}", self.root.display()))?;
        let probe = tempfile::tempfile_in(&self.root).with_context(|| {
            format!("archive directory {} is not writable", self.root.display())
        })?;
        drop(probe);
        Ok(())
    }

    fn put_file_if_absent(&self, key: &str, path: &Path) -> Result<PutOutcome> {
        // On the store's filesystem the file itself becomes the object: made durable and
        // readable, then linked into place (no copy; an existing object is never replaced).
        // On another filesystem it is copied.
        let dest = self.path(key)?;
        if dest.exists() {
            return Ok(PutOutcome::AlreadyExists);
        }
        let dir = dest.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating directory {}", dir.display()))?;
        // Only a regular file (a symlink would be linked itself), and only one this process
        // may make readable: anything else is copied.
        let regular = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
        let linkable = regular && {
            let src =
                fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            src.sync_all()
                .with_context(|| format!("syncing {}", path.display()))?;
            #[cfg(unix)]
            let readable = {
                use std::os::unix::fs::PermissionsExt;
                src.set_permissions(fs::Permissions::from_mode(0o644))
                    .is_ok()
            };
            #[cfg(not(unix))]
            let readable = true;
            readable
        };
        if !linkable {
            return self.put_with(key, &mut |f| {
                let mut src =
                    fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
                std::io::copy(&mut src, f)?;
                Ok(())
            });
        }
        match fs::hard_link(path, &dest) {
            Ok(()) => {
                if let Ok(d) = fs::File::open(&dir) {
                    let _ = d.sync_all();
                }
                return Ok(PutOutcome::Created);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Ok(PutOutcome::AlreadyExists)
            }
            // Another filesystem (EXDEV), or links not allowed there: copy.
            Err(_) => {}
        }
        self.put_with(key, &mut |f| {
            let mut src =
                fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            std::io::copy(&mut src, f)?;
            Ok(())
        })
    }

    fn put_bytes_if_absent(&self, key: &str, data: &[u8]) -> Result<PutOutcome> {
        self.put_with(key, &mut |f| Ok(f.write_all(data)?))
    }

    fn put_bytes(&self, key: &str, data: &[u8]) -> Result<()> {
        let dest = self.path(key)?;
        let (_, mut tmp) = self.temp_beside(&dest)?;
        tmp.write_all(data)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&dest)
            .with_context(|| format!("storing {}", dest.display()))?;
        Ok(())
    }

    fn get_into(&self, key: &str, w: &mut (dyn Write + Send)) -> Result<u64> {
        let p = self.path(key)?;
        let mut f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!("{}/{key}", self.describe())).into())
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", p.display())),
        };
        std::io::copy(&mut f, w).with_context(|| format!("reading {}", p.display()))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>> {
        let mut out = Vec::new();
        // Walk from the deepest directory the prefix names.
        let start_rel = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let start = if start_rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(start_rel)
        };
        let mut stack = vec![start];
        while let Some(dir) = stack.pop() {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
            };
            // A file removed while the directory is read (another process's) is not listed.
            let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
            for ent in rd {
                let ent = ent?;
                let ft = match ent.file_type() {
                    Ok(ft) => ft,
                    Err(e) if gone(&e) => continue,
                    Err(e) => return Err(e.into()),
                };
                let p = ent.path();
                if ft.is_dir() {
                    stack.push(p);
                } else if ft.is_file() {
                    let name = ent.file_name();
                    if name.to_string_lossy().starts_with(".tmp-") {
                        continue;
                    }
                    let rel = p.strip_prefix(&self.root).unwrap_or(&p);
                    let key = rel
                        .to_string_lossy()
                        .replace(std::path::MAIN_SEPARATOR, "/");
                    if key.starts_with(prefix) {
                        let size = match ent.metadata() {
                            Ok(m) => m.len(),
                            Err(e) if gone(&e) => continue,
                            Err(e) => return Err(e.into()),
                        };
                        out.push(ObjectMeta { key, size });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_dirs(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent?;
            if ent.file_type()?.is_dir() {
                out.push(ent.file_name().to_string_lossy().into_owned());
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let p = self.path(key)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("deleting {}", p.display())),
        }
    }
}
