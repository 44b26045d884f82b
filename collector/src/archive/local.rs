//! Local-directory archive (the embedded default).

use super::{temp_name, Archive, ArchiveError};
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
}
