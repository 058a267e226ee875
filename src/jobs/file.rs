//! A job's export file: reopened at its last checkpoint, appended to batch by batch, and made durable before
//! each checkpoint is recorded. Blocking I/O: the runner calls it from its own threads.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;

use super::storage::id_of;

/// Why a job's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// Another process (an instance whose lease ran out but which still runs) holds the file.
    #[error("the file is locked by another process")]
    Busy,
    /// The file is shorter than its checkpoint: it was lost or cut outside pgspout.
    #[error("the file holds {actual} bytes, fewer than the {checkpoint} its checkpoint recorded")]
    Short {
        /// Its length.
        actual: u64,
        /// The checkpoint's.
        checkpoint: u64,
    },
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A request to the object store failed.
    #[error(transparent)]
    S3(#[from] super::s3::S3Error),
}

/// An open, exclusively locked job file.
pub(crate) struct JobFile {
    file: File,
    len: u64,
}

impl JobFile {
    /// Opens (or creates) the file at `path`, locks it, and cuts it back to `checkpoint` bytes: whatever was
    /// written after the last checkpoint is discarded, so the file is a valid prefix again.
    pub(crate) fn open(path: &Path, checkpoint: u64) -> Result<JobFile, FileError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // An advisory lock, released when the process dies: a stale instance still writing cannot interleave.
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(FileError::Busy),
            Err(TryLockError::Error(error)) => return Err(error.into()),
        }
        let actual = file.metadata()?.len();
        if actual < checkpoint {
            return Err(FileError::Short { actual, checkpoint });
        }
        file.set_len(checkpoint)?;
        file.seek(SeekFrom::Start(checkpoint))?;
        if checkpoint == 0 {
            // The new file's directory entry must be durable too.
            if let Some(directory) = path.parent() {
                File::open(directory)?.sync_all()?;
            }
        }
        Ok(JobFile { file, len: checkpoint })
    }

    /// Appends `bytes`.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes)?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Appends the first `len` bytes of each of `pieces`, in order (each of whole compressed members or
    /// frames, so they concatenate).
    pub(crate) fn append_files(&mut self, pieces: &[(PathBuf, u64)]) -> Result<(), FileError> {
        for (piece, len) in pieces {
            let mut source = File::open(piece)?.take(*len);
            // File to file: the kernel copies (copy_file_range), without the bytes passing through here.
            let copied = io::copy(&mut source, &mut self.file)?;
            if copied < *len {
                return Err(FileError::Short {
                    actual: copied,
                    checkpoint: *len,
                });
            }
            self.len += copied;
        }
        Ok(())
    }
}

/// The ids of the job files in `directory` last modified more than `age` ago.
pub(super) fn files_older_than(directory: &Path, age: Duration) -> Vec<Uuid> {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified.elapsed().is_ok_and(|elapsed| elapsed > age))
        })
        .filter_map(|entry| entry.file_name().to_str().and_then(id_of))
        .collect()
}

/// Removes every file of the jobs `ids`: whatever the directory holds under their ids, in any format.
pub(crate) fn remove_files(directory: &Path, ids: &[Uuid]) {
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        // Object storage's spool directory is made when a parallel job first needs it.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(directory = %directory.display(), %error, "cannot list the job directory");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(id_of) else {
            continue;
        };
        if !ids.contains(&id) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed export file"),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove export file"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_cuts_the_file_back_to_its_checkpoint_and_appends_after_it() {
        let dir = std::env::temp_dir().join(format!("pgspout-file-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("job.ndjson");
        let mut file = JobFile::open(&path, 0).unwrap();
        file.write(b"checkpointed\n").unwrap();
        file.sync().unwrap();
        file.write(b"torn tail").unwrap();
        drop(file);
        let mut file = JobFile::open(&path, 13).unwrap();
        assert_eq!(file.len(), 13);
        file.write(b"more\n").unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), b"checkpointed\nmore\n");
        assert!(matches!(
            JobFile::open(&path, 100),
            Err(FileError::Short {
                actual: 18,
                checkpoint: 100
            })
        ));
        let held = JobFile::open(&path, 18).unwrap();
        assert!(matches!(JobFile::open(&path, 18), Err(FileError::Busy)));
        drop(held);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
