//! Where job files go: a directory (`jobs.directory`) or object storage (`jobs.storage`), behind one
//! [`Sink`] a run writes to, checkpoints and finishes.
//!
//! In object storage a job's file is a multipart upload: its bytes are cut into parts of `jobs.s3.part_size`
//! as they come (every part but the last of that one size, as S3, R2 and s3s require), and the bytes after
//! the last whole part (the tail) travel with each checkpoint in the job's row, with the upload's id and its
//! parts' entity tags. Another run continues the same upload from there: the parts already uploaded are
//! checked against the store's own list and never sent again. The object appears only when the upload is
//! completed, after the last row: a reader never sees a short file.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use uuid::Uuid;

use super::file::{FileError, JobFile, remove_files};
use super::s3::ObjectStore;
use crate::compress::Encoding;
use crate::encode::Format;

/// Where this instance's job files go.
#[derive(Clone, Debug)]
pub(crate) enum Storage {
    /// A directory (shared by instances that share a database).
    Directory(PathBuf),
    /// A bucket and prefix.
    Objects(Arc<ObjectStore>),
}

/// A multipart upload as a checkpoint records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UploadState {
    /// The object's key.
    pub(crate) key: String,
    /// The upload's id.
    pub(crate) id: String,
    /// The entity tags of its parts, in order.
    pub(crate) etags: Vec<String>,
    /// The bytes after the last part.
    pub(crate) tail: Vec<u8>,
}

/// The name of job `id`'s file in `format` and `encoding`.
pub(crate) fn file_name(id: Uuid, format: Format, encoding: Encoding) -> String {
    format!("{id}.{}{}", format.job_file().extension, encoding.suffix())
}

/// The file of part `number` of parallel job `id`, in `directory`, until the parts are joined.
pub(crate) fn part_path(directory: &Path, id: Uuid, number: i32, format: Format, encoding: Encoding) -> PathBuf {
    directory.join(format!(
        "{id}.part{number}.{}{}",
        format.job_file().extension,
        encoding.suffix()
    ))
}

impl Storage {
    /// Where a parallel job's parts are written before they are joined: the job directory, or (object
    /// storage) a directory of this machine's (a part another instance resumes starts over there).
    pub(crate) fn spool(&self) -> PathBuf {
        match self {
            Storage::Directory(directory) => directory.clone(),
            // Named after the store: instances on one machine serving other databases have their own.
            Storage::Objects(store) => std::env::temp_dir().join(format!("pgspout-parts-{}", store.digest())),
        }
    }

    /// Job file `name`, holding `start` bytes at its last checkpoint (`upload` in object storage): cut back
    /// to them, or a new file when `start` is 0. `FileError::Short` when the checkpoint's bytes are not all
    /// there any more.
    pub(crate) async fn open(&self, name: &str, start: u64, upload: Option<&UploadState>) -> Result<Sink, FileError> {
        match self {
            Storage::Directory(directory) => tokio::task::block_in_place(|| open_file(directory.join(name), start)),
            Storage::Objects(store) => {
                let key = store.key(name);
                let resumed = upload.filter(|u| u.key == key);
                let upload = match resumed {
                    Some(state) if start > 0 => Upload::resume(store.clone(), state, start).await?,
                    // The checkpoint's bytes are in no upload (written before the job moved to object storage).
                    None if start > 0 => {
                        return Err(FileError::Short {
                            actual: 0,
                            checkpoint: start,
                        });
                    }
                    _ => {
                        if let Some(old) = upload {
                            abort(store, &old.key, &old.id).await;
                        }
                        let id = store.create_upload(&key).await?;
                        Upload::new(store.clone(), key, id)
                    }
                };
                Ok(Sink::Upload(upload))
            }
        }
    }

    /// Removes every file of the jobs `ids` (in object storage, the objects named after them, and their
    /// parallel parts' files here), and aborts `uploads` (key and id).
    pub(crate) async fn remove(&self, ids: &[Uuid], uploads: &[(String, String)]) {
        let spool = self.spool();
        let local = ids.to_vec();
        if let Err(error) = tokio::task::spawn_blocking(move || remove_files(&spool, &local)).await {
            tracing::warn!(%error, "cannot remove export files");
        }
        let Storage::Objects(store) = self else {
            return;
        };
        for (key, id) in uploads {
            abort(store, key, id).await;
        }
        for id in ids {
            let keys = match store.list(&id.to_string()).await {
                Ok(keys) => keys,
                Err(error) => {
                    tracing::warn!(job = %id, %error, "cannot list the job's objects");
                    continue;
                }
            };
            for key in keys {
                match store.delete(&key).await {
                    Ok(()) => tracing::info!(%key, "removed export object"),
                    Err(error) => tracing::warn!(%key, %error, "cannot remove export object"),
                }
            }
        }
    }

    /// The ids the files in object storage are named after (none for a directory, which the sweep lists
    /// itself).
    pub(crate) async fn object_ids(&self) -> Result<Vec<Uuid>, super::s3::S3Error> {
        let Storage::Objects(store) = self else {
            return Ok(Vec::new());
        };
        let keys = store.list("").await?;
        let mut ids: Vec<Uuid> = keys
            .iter()
            .filter_map(|key| store.name_of(key))
            .filter_map(id_of)
            .collect();
        ids.dedup();
        Ok(ids)
    }
}

/// The file at `path`, holding `start` bytes at its last checkpoint (see [`JobFile::open`]).
pub(crate) fn open_file(path: PathBuf, start: u64) -> Result<Sink, FileError> {
    let file = JobFile::open(&path, start)?;
    Ok(Sink::File { file, path })
}

/// Aborts an upload, logging a failure (the bucket's lifecycle rule for incomplete uploads is the backstop).
async fn abort(store: &ObjectStore, key: &str, id: &str) {
    match store.abort_upload(key, id).await {
        Ok(()) => tracing::info!(%key, "aborted the export's upload"),
        Err(error) => tracing::warn!(%key, %error, "cannot abort the export's upload"),
    }
}

/// A job file being written.
pub(crate) enum Sink {
    /// A file on disk.
    File {
        /// The file.
        file: JobFile,
        /// Its path.
        path: PathBuf,
    },
    /// A multipart upload.
    Upload(Upload),
}

impl Sink {
    /// The file's path or key, for messages.
    pub(crate) fn name(&self) -> String {
        match self {
            Sink::File { path, .. } => path.display().to_string(),
            Sink::Upload(upload) => upload.key.clone(),
        }
    }

    /// Appends `bytes` (in object storage, uploading every part they fill).
    pub(crate) async fn write(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        match self {
            Sink::File { file, .. } => Ok(tokio::task::block_in_place(|| file.write(bytes))?),
            Sink::Upload(upload) => upload.write(bytes).await,
        }
    }

    /// Makes what was written so far durable (on disk; an upload's tail is made so by the checkpoint that
    /// records it).
    pub(crate) async fn sync(&mut self) -> Result<(), FileError> {
        match self {
            Sink::File { file, .. } => Ok(tokio::task::block_in_place(|| file.sync())?),
            Sink::Upload(_) => Ok(()),
        }
    }

    /// Makes the file whole: synced on disk; in object storage, the last part uploaded and the upload
    /// completed, so the object appears.
    pub(crate) async fn finish(&mut self) -> Result<(), FileError> {
        match self {
            Sink::File { .. } => self.sync().await,
            Sink::Upload(upload) => upload.finish().await,
        }
    }

    /// The upload's state, for a checkpoint to record (none for a file).
    pub(crate) fn upload(&self) -> Option<UploadState> {
        match self {
            Sink::File { .. } => None,
            Sink::Upload(upload) => Some(UploadState {
                key: upload.key.clone(),
                id: upload.id.clone(),
                etags: upload.etags.clone(),
                tail: upload.tail.to_vec(),
            }),
        }
    }

    /// Whether this run started a new upload, which must be recorded before anything else is.
    pub(crate) fn is_new_upload(&self) -> bool {
        matches!(self, Sink::Upload(upload) if upload.etags.is_empty() && upload.len == 0)
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Sink::File { file, .. } => file.len(),
            Sink::Upload(upload) => upload.len,
        }
    }

    /// Whether nothing has been written.
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the first `len` bytes of each of `pieces` in order (files on disk, each of whole compressed
    /// members or frames, so they concatenate); then finishes.
    pub(crate) async fn append_files(&mut self, pieces: &[(PathBuf, u64)]) -> Result<(), FileError> {
        if let Sink::File { file, .. } = self {
            tokio::task::block_in_place(|| file.append_files(pieces))?;
            return self.finish().await;
        }
        let mut block = vec![0; 1 << 20];
        for (piece, len) in pieces {
            let mut source = std::fs::File::open(piece)?.take(*len);
            let mut copied = 0;
            loop {
                let read = tokio::task::block_in_place(|| source.read(&mut block))?;
                if read == 0 {
                    break;
                }
                self.write(&block[..read]).await?;
                copied += read as u64;
            }
            if copied < *len {
                return Err(FileError::Short {
                    actual: copied,
                    checkpoint: *len,
                });
            }
        }
        self.finish().await
    }
}

/// A multipart upload being written.
pub(crate) struct Upload {
    store: Arc<ObjectStore>,
    /// The object's key.
    key: String,
    /// The upload's id.
    id: String,
    /// The entity tags of its parts, in order.
    etags: Vec<String>,
    /// The bytes not in a part yet.
    tail: BytesMut,
    /// This upload's part size: the configured one, or that of its parts when continued.
    part_size: usize,
    /// Bytes written, parts and tail.
    len: u64,
}

impl Upload {
    fn new(store: Arc<ObjectStore>, key: String, id: String) -> Upload {
        let part_size = store.part_size;
        Upload {
            store,
            key,
            id,
            etags: Vec::new(),
            tail: BytesMut::new(),
            part_size,
            len: 0,
        }
    }

    /// Continues the upload a checkpoint of `start` bytes recorded, once the store's list of its parts
    /// shows every recorded part, unchanged; `FileError::Short` when it does not (or the upload is gone).
    async fn resume(store: Arc<ObjectStore>, state: &UploadState, start: u64) -> Result<Upload, FileError> {
        let listed = match store.list_parts(&state.key, &state.id).await {
            Ok(listed) => listed,
            Err(error) if error.is_missing() => {
                return Err(FileError::Short {
                    actual: 0,
                    checkpoint: start,
                });
            }
            Err(error) => return Err(error.into()),
        };
        let mut actual = 0u64;
        for (number, etag) in state.etags.iter().enumerate() {
            let found = listed.iter().find(|p| usize::from(p.number) == number + 1);
            match found {
                Some(part) if part.etag.as_ref().is_none_or(|listed| listed == etag) => actual += part.size,
                _ => break,
            }
        }
        actual += state.tail.len() as u64;
        if actual != start {
            return Err(FileError::Short {
                actual,
                checkpoint: start,
            });
        }
        let part_size = listed.first().map_or(store.part_size, |p| p.size as usize);
        Ok(Upload {
            store,
            key: state.key.clone(),
            id: state.id.clone(),
            etags: state.etags.clone(),
            tail: BytesMut::from(&state.tail[..]),
            part_size,
            len: start,
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), FileError> {
        self.tail.extend_from_slice(bytes);
        self.len += bytes.len() as u64;
        while self.tail.len() >= self.part_size {
            let part = self.tail.split_to(self.part_size).freeze();
            self.upload(part).await?;
        }
        Ok(())
    }

    /// Uploads the next part.
    async fn upload(&mut self, part: Bytes) -> Result<(), FileError> {
        let number = u16::try_from(self.etags.len() + 1)
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| std::io::Error::other("the file outgrew S3's 10,000 parts: raise jobs.s3.part_size"))?;
        let etag = self.store.upload_part(&self.key, &self.id, number, part).await?;
        self.etags.push(etag);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), FileError> {
        if !self.tail.is_empty() || self.etags.is_empty() {
            let last = self.tail.split().freeze();
            self.upload(last).await?;
        }
        Ok(self.store.complete_upload(&self.key, &self.id, &self.etags).await?)
    }
}

/// A job file name's job id.
pub(crate) fn id_of(name: &str) -> Option<Uuid> {
    name.split('.').next().and_then(|stem| Uuid::parse_str(stem).ok())
}
