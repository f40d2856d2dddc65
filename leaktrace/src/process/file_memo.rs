//! What was read from an object file, kept for the tracer's life by the file's identity.
//!
//! The agent attaches to a target more than once: a session watches it, and each exact window
//! attaches another session of its own. What a session reads from the target's objects (V8's
//! layout from a 100 MB node binary, an object's unwind table, where its libuv runs queued work)
//! cannot change while the file does not, yet reading it again made every window's attach cost
//! the agent most of a CPU-second. Kept here, it is read once per file, whichever session asks.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Mutex, PoisonError},
};

/// A file as it is now: its inode, and what a rewrite in place changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileId {
    /// The identity of the file at `path` (links followed: `/proc/PID/map_files/...` and
    /// `/proc/PID/exe` name the file the process mapped).
    pub fn of(path: &Path) -> io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        })
    }

    /// Its inode: what a process's maps name the file by.
    pub fn ino(&self) -> u64 {
        self.ino
    }
}

/// Values by file, at most `capacity` of them: when full it starts again empty, since a node
/// whose containers bring new binaries all day must not keep every one of them.
pub struct FileMemo<T> {
    entries: Mutex<Option<HashMap<FileId, T>>>,
    capacity: usize,
}

impl<T: Clone> FileMemo<T> {
    pub const fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(None),
            capacity,
        }
    }

    /// The value kept for `id`, else what `make` returns, kept. `make` runs unlocked: reading a
    /// large file must not hold back another session's lookup.
    pub fn get_or_insert_with(&self, id: FileId, make: impl FnOnce() -> T) -> T {
        if let Some(value) = self.lock().as_ref().and_then(|m| m.get(&id)) {
            return value.clone();
        }
        let value = make();
        let mut entries = self.lock();
        let map = entries.get_or_insert_with(HashMap::new);
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(id, value.clone());
        value
    }

    /// [`Self::get_or_insert_with`] for the file at `path`; a file that cannot be looked at is
    /// read (its read says why it fails) and nothing is kept.
    pub fn get_or_read(&self, path: &Path, make: impl FnOnce() -> T) -> T {
        match FileId::of(path) {
            Ok(id) => self.get_or_insert_with(id, make),
            Err(_) => make(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<FileId, T>>> {
        // A panic elsewhere leaves whole values behind: the map is still good.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of this test's own, emptied at its end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("leaktrace-memo-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_once_per_file_and_again_once_rewritten() {
        let dir = Scratch::new("rewritten");
        let path = dir.0.join("object");
        std::fs::write(&path, b"one").unwrap();
        let memo = FileMemo::new(8);
        let mut reads = 0;
        let mut read = |memo: &FileMemo<Vec<u8>>| {
            memo.get_or_insert_with(FileId::of(&path).unwrap(), || {
                reads += 1;
                std::fs::read(&path).unwrap()
            })
        };
        assert_eq!(read(&memo), b"one");
        assert_eq!(read(&memo), b"one");
        std::fs::write(&path, b"two!").unwrap();
        assert_eq!(read(&memo), b"two!");
        assert_eq!(reads, 2);
    }

    #[test]
    fn starts_again_when_full() {
        let dir = Scratch::new("full");
        let memo = FileMemo::new(2);
        let ids: Vec<FileId> = (0..3)
            .map(|i| {
                let path = dir.0.join(i.to_string());
                std::fs::write(&path, [i]).unwrap();
                FileId::of(&path).unwrap()
            })
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            memo.get_or_insert_with(id, || i);
        }
        assert_eq!(memo.get_or_insert_with(ids[0], || 9), 9);
        assert_eq!(memo.get_or_insert_with(ids[2], || 9), 2);
    }
}
