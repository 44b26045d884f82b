//! Local-directory archive (the embedded default).

use super::{temp_name, Archive, ArchiveError, DirEntry};
use bytes::Bytes;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct LocalArchive {
    root: PathBuf,
}

impl LocalArchive {
    pub fn open(root: &str) -> Result<Self, ArchiveError> {
        let root = PathBuf::from(root);
        fs::create_dir_all(&root).map_err(|e| ArchiveError::Root {
            root: root.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Self { root })
    }

    fn put_blocking(root: &Path, path: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        let (dir, tmp) = temp_name(path);
        let full_dir = root.join(dir);
        let err = |what: &str, p: &Path, e: std::io::Error| ArchiveError::Io {
            path: p.display().to_string(),
            message: format!("{what}: {e}"),
        };
        if !full_dir.is_dir() {
            fs::create_dir_all(&full_dir).map_err(|e| err("create directory", &full_dir, e))?;
            // Make the new directory entries durable up to the root.
            let mut d = full_dir.parent();
            while let Some(p) = d {
                sync_dir(p).map_err(|e| err("fsync directory", p, e))?;
                if p == root {
                    break;
                }
                d = p.parent();
            }
        }
        let tmp = root.join(tmp);
        let dst = root.join(path);
        let mut f = fs::File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| err("write", &tmp, e))?;
        f.sync_all().map_err(|e| err("fsync", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| err("rename", &dst, e))?;
        sync_dir(&full_dir).map_err(|e| err("fsync directory", &full_dir, e))
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Archive for LocalArchive {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let (root, path) = (self.root.clone(), path.to_string());
        tokio::task::spawn_blocking(move || Self::put_blocking(&root, &path, &bytes))
            .await
            .map_err(|e| ArchiveError::Io {
                path: "<local put>".into(),
                message: e.to_string(),
            })?
    }

    fn location(&self, path: &str) -> String {
        self.root.join(path).display().to_string()
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, ArchiveError> {
        let full = self.root.join(path);
        blocking(move || match fs::read(&full) {
            Ok(b) => Ok(Some(Bytes::from(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("read", &full, e)),
        })
        .await
    }

    async fn list(&self, dir: &str) -> Result<Vec<DirEntry>, ArchiveError> {
        let full = self.root.join(dir);
        blocking(move || {
            let rd = match fs::read_dir(&full) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err("list", &full, e)),
            };
            let mut out = Vec::new();
            for entry in rd {
                let entry = entry.map_err(|e| io_err("list", &full, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                let meta = entry
                    .metadata()
                    .map_err(|e| io_err("stat", &entry.path(), e))?;
                out.push(DirEntry {
                    name,
                    is_dir: meta.is_dir(),
                    len: if meta.is_dir() { 0 } else { meta.len() },
                });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, path: &str) -> Result<bool, ArchiveError> {
        let full = self.root.join(path);
        blocking(move || {
            let result = match fs::symlink_metadata(&full) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(e) => return Err(io_err("stat", &full, e)),
                Ok(m) if m.is_dir() => fs::remove_dir(&full),
                Ok(_) => fs::remove_file(&full),
            };
            result.map_err(|e| io_err("delete", &full, e))?;
            // The removal survives power loss once the parent is synced.
            if let Some(parent) = full.parent() {
                sync_dir(parent).map_err(|e| io_err("fsync directory", parent, e))?;
            }
            Ok(true)
        })
        .await
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> ArchiveError {
    ArchiveError::Io {
        path: p.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArchiveError> + Send + 'static,
) -> Result<T, ArchiveError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArchiveError::Io {
            path: "<local archive>".into(),
            message: e.to_string(),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_replaces_whole_files_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        a.put("s/c/2025/01/01/00/1.ts", Bytes::from_static(b"first"))
            .await
            .unwrap();
        a.put("s/c/2025/01/01/00/1.ts", Bytes::from_static(b"second"))
            .await
            .unwrap();
        let d = dir.path().join("s/c/2025/01/01/00");
        assert_eq!(fs::read(d.join("1.ts")).unwrap(), b"second");
        assert_eq!(fs::read_dir(&d).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn get_list_delete_see_only_visible_entries() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalArchive::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(a.get("s/c/x.ts").await.unwrap(), None);
        assert!(a.list("s").await.unwrap().is_empty());
        a.put("s/c/b.ts", Bytes::from_static(b"bb")).await.unwrap();
        a.put("s/c/a.ts", Bytes::from_static(b"a")).await.unwrap();
        fs::write(dir.path().join("s/c/.a.ts.tmp"), b"stale").unwrap();
        let names: Vec<(String, u64)> = a
            .list("s/c")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.len))
            .collect();
        assert_eq!(names, [("a.ts".to_string(), 1), ("b.ts".to_string(), 2)]);
        assert!(a.list("s").await.unwrap()[0].is_dir);
        assert_eq!(a.get("s/c/b.ts").await.unwrap().unwrap(), &b"bb"[..]);
        assert!(a.delete("s/c/b.ts").await.unwrap());
        assert!(!a.delete("s/c/b.ts").await.unwrap());
        assert!(a.delete("s/c").await.is_err(), "not empty");
    }
}
