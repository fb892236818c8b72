//! Artifact files under the data directory. Owned by the async side (handlers, reporter);
//! workers only get paths.
//!
//! Layout: `models/<zz>/<id>.safetensors`, `datasets/<zz>/<id>.<ext>` (`zz`: the id's last two
//! hex digits, see [`ArtifactStore::path`]), `tmp/` for everything
//! being written, `checkpoints/<job_id>/` for resumable jobs. Paths are built from
//! server-generated ids only, never from client input. Every file is written under `tmp/`,
//! fsynced, then renamed into place, so no partial file ever appears under a final name; a
//! [`TempFile`] removes itself when dropped unless persisted (a request that dies mid-upload
//! leaves nothing behind).

use std::path::{Path, PathBuf};

use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("upload exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What kind of artifact a path is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArtifactKind {
    Model,
    Dataset,
}

impl ArtifactKind {
    fn dir(self) -> &'static str {
        match self {
            ArtifactKind::Model => "models",
            ArtifactKind::Dataset => "datasets",
        }
    }
}

/// The shard folder of an id: its last two characters (random hex digits for a UUIDv7), lowercased.
fn shard_of(id: &str) -> String {
    let tail =
        id.get(id.len().saturating_sub(2)..).filter(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    tail.map_or_else(|| "00".to_string(), str::to_ascii_lowercase)
}

/// The artifact store rooted at the data directory.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

/// A file under `tmp/` that is deleted on drop unless [`TempFile::persist`]ed.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Renames into `dest` (creating its parent) and fsyncs the directory.
    pub fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::rename(&self.path, dest)?;
        self.keep = true;
        if let Some(parent) = dest.parent() {
            // Make the rename durable; failure here is not worth failing the upload for.
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A streamed upload: the temp file, its size and sha256.
#[derive(Debug)]
pub struct Upload {
    pub file: TempFile,
    pub size: u64,
    pub sha256: String,
}

impl ArtifactStore {
    /// Creates the directory layout (with owner-only permissions on Unix).
    pub fn open(root: &Path) -> std::io::Result<ArtifactStore> {
        for d in ["", "models", "datasets", "tmp", "checkpoints", "derived"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        Ok(ArtifactStore { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Final path of an artifact. `id` is a server-generated UUID.
    ///
    /// Files are sharded by the id's last two hex digits: ids are UUIDv7, whose leading digits
    /// are a timestamp (so `id[..2]` put every artifact of a year in one folder) and whose tail
    /// is random. Data dirs written before used `id[..2]`; a file found only there is served
    /// from there (one `stat`), so old data dirs load unchanged and new files use the new shard.
    pub fn path(&self, kind: ArtifactKind, id: &str, ext: &str) -> PathBuf {
        let file = format!("{id}.{ext}");
        let dir = self.root.join(kind.dir());
        let path = dir.join(shard_of(id)).join(&file);
        if !path.exists() {
            let legacy = dir.join(id.get(..2).unwrap_or("00")).join(&file);
            if legacy.exists() {
                return legacy;
            }
        }
        path
    }

    pub fn model_path(&self, id: &str) -> PathBuf {
        self.path(ArtifactKind::Model, id, "safetensors")
    }

    pub fn dataset_path(&self, id: &str) -> PathBuf {
        self.path(ArtifactKind::Dataset, id, "safetensors")
    }

    /// A file derived from a model (another download format), cached next to it.
    pub fn derived_path(&self, id: &str, format: &str, ext: &str) -> PathBuf {
        self.root.join("derived").join(format!("{id}.{format}.{ext}"))
    }

    /// Removes every derived file of a model.
    pub fn remove_derived(&self, id: &str) {
        if let Ok(rd) = std::fs::read_dir(self.root.join("derived")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(id) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Directory for a job's checkpoints.
    pub fn checkpoint_dir(&self, job_id: &str) -> PathBuf {
        self.root.join("checkpoints").join(job_id)
    }

    /// A fresh temp file path (not yet created).
    pub fn temp_file(&self, suffix: &str) -> TempFile {
        let name = format!("{}.{suffix}.part", uuid::Uuid::new_v4().simple());
        TempFile { path: self.root.join("tmp").join(name), keep: false }
    }

    /// Streams a request body into a temp file while hashing and counting; fails with
    /// [`StoreError::TooLarge`] as soon as `limit` is passed (the partial file is removed).
    pub async fn save_stream<S, E>(&self, mut body: S, limit: u64) -> Result<Upload, StoreError>
    where
        S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let file = self.temp_file("upload");
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // Owner-only, like the directories (the data dir is 0700 too; this keeps a copied or
        // re-permissioned tree private).
        #[cfg(unix)]
        opts.mode(0o600);
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, opts.open(file.path()).await?);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| StoreError::Body(e.to_string()))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&chunk);
            crate::fault::write_check()?;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        let inner = out.into_inner();
        inner.sync_all().await?;
        Ok(Upload { file, size, sha256: hex::encode(hasher.finalize()) })
    }

    /// sha256 of a file (blocking; call from a worker or `spawn_blocking`).
    pub fn sha256_file(path: &Path) -> std::io::Result<String> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    }

    /// Start-up sweep: removes everything in `tmp/` and any artifact whose id is not in
    /// `known` (left by a crash between rename and commit). Returns how many files it removed.
    pub fn sweep(&self, kind: ArtifactKind, known: &std::collections::HashSet<String>) -> std::io::Result<usize> {
        let mut removed = 0;
        if kind == ArtifactKind::Model {
            for e in std::fs::read_dir(self.root.join("tmp"))? {
                let e = e?;
                if e.file_type()?.is_file() {
                    std::fs::remove_file(e.path())?;
                    removed += 1;
                }
            }
        }
        let dir = self.root.join(kind.dir());
        for shard in std::fs::read_dir(&dir)? {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for f in std::fs::read_dir(shard.path())? {
                let f = f?;
                let name = f.file_name().to_string_lossy().to_string();
                let id = name.split('.').next().unwrap_or_default().to_string();
                if !known.contains(&id) {
                    std::fs::remove_file(f.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_spread_uuid_v7_ids_and_old_paths_still_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path()).unwrap();
        // Ids made in one burst share their leading (timestamp) digits but not their tails.
        let ids: Vec<String> = (0..256).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let shards: std::collections::HashSet<_> =
            ids.iter().map(|id| store.model_path(id).parent().unwrap().to_path_buf()).collect();
        let legacy: std::collections::HashSet<_> = ids.iter().map(|id| &id[..2]).collect();
        assert_eq!(legacy.len(), 1, "the old scheme put them all in one shard");
        assert!(shards.len() > 100, "256 ids over {} shards", shards.len());
        // A file stored under the old shard is found there; a new id goes to the new shard.
        let id = &ids[0];
        let old = dir.path().join("models").join(&id[..2]).join(format!("{id}.safetensors"));
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, b"x").unwrap();
        assert_eq!(store.model_path(id), old);
        let new = store.model_path(&ids[1]);
        assert!(new.starts_with(dir.path().join("models").join(&ids[1][ids[1].len() - 2..])));
        // The start-up sweep keeps known files in either layout and removes unknown ones.
        let known: std::collections::HashSet<String> = [id.clone()].into();
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::write(&new, b"orphan").unwrap();
        assert_eq!(store.sweep(ArtifactKind::Model, &known).unwrap(), 1);
        assert!(old.exists() && !new.exists());
    }

    #[test]
    fn odd_ids_get_a_fixed_shard() {
        assert_eq!(shard_of("abcdef"), "ef");
        assert_eq!(shard_of("ABCDEF"), "ef");
        assert_eq!(shard_of("x"), "00");
        assert_eq!(shard_of("ab/.."), "00");
    }
}
