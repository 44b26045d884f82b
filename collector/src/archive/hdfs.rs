//! HDFS archive through hdfs-native (a pure-Rust client: no JVM, no libhdfs).

use super::{temp_name, Archive, ArchiveError, DirEntry};
use bytes::Bytes;
use hdfs_native::{Client, ClientBuilder, HdfsError, WriteOptions};

pub struct HdfsArchive {
    client: Client,
    /// `hdfs://host:port`
    authority: String,
    /// Base directory inside HDFS, `/`-prefixed, no trailing `/`.
    base: String,
}

impl HdfsArchive {
    /// `root` is `hdfs://namenode:port/base/dir`.
    pub async fn open(root: &str) -> Result<Self, ArchiveError> {
        let rest = root
            .strip_prefix("hdfs://")
            .ok_or_else(|| ArchiveError::Root {
                root: root.into(),
                message: "not an hdfs:// URL".into(),
            })?;
        let (host, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if host.is_empty() {
            return Err(ArchiveError::Root {
                root: root.into(),
                message: "no NameNode host in the URL".into(),
            });
        }
        let authority = format!("hdfs://{host}");
        let client = ClientBuilder::new()
            .with_url(authority.clone())
            .build()
            .map_err(|e| ArchiveError::Root {
                root: root.into(),
                message: e.to_string(),
            })?;
        let archive = Self {
            client,
            authority,
            base: base.to_string(),
        };
        // Fail at start, not at the first segment, when HDFS is unreachable.
        let dir = if archive.base.is_empty() {
            "/"
        } else {
            &archive.base
        };
        archive
            .client
            .mkdirs(dir, 0o755, true)
            .await
            .map_err(|e| ArchiveError::Root {
                root: root.into(),
                message: format!("cannot create {dir}: {e}"),
            })?;
        Ok(archive)
    }

    fn abs(&self, path: &str) -> String {
        if path.is_empty() {
            return if self.base.is_empty() {
                "/".into()
            } else {
                self.base.clone()
            };
        }
        format!("{}/{}", self.base, path)
    }

    fn err(&self, what: &str, p: &str, e: HdfsError) -> ArchiveError {
        ArchiveError::Io {
            path: format!("{}{p}", self.authority),
            message: format!("{what}: {e}"),
        }
    }
}

/// A missing path: the client's own error, or the NameNode's Java exception.
fn not_found(e: &HdfsError) -> bool {
    match e {
        HdfsError::FileNotFound(_) => true,
        HdfsError::RPCError(class, _) => class.ends_with("FileNotFoundException"),
        _ => false,
    }
}

impl Archive for HdfsArchive {
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), ArchiveError> {
        let (_, tmp) = temp_name(path);
        let (tmp, dst) = (self.abs(&tmp), self.abs(path));
        let err = |what: &str, p: &str, e: hdfs_native::HdfsError| ArchiveError::Io {
            path: format!("{}{p}", self.authority),
            message: format!("{what}: {e}"),
        };
        let opts = WriteOptions::default().overwrite(true).create_parent(true);
        let mut w = self
            .client
            .create(&tmp, opts)
            .await
            .map_err(|e| err("create", &tmp, e))?;
        w.write_bytes(bytes)
            .await
            .map_err(|e| err("write", &tmp, e))?;
        w.hsync().await.map_err(|e| err("hsync", &tmp, e))?;
        w.close().await.map_err(|e| err("close", &tmp, e))?;
        self.client
            .rename(&tmp, &dst, true)
            .await
            .map_err(|e| err("rename", &dst, e))
    }

    fn location(&self, path: &str) -> String {
        format!("{}{}", self.authority, self.abs(path))
    }

    async fn get(&self, path: &str) -> Result<Option<Bytes>, ArchiveError> {
        let p = self.abs(path);
        let reader = match self.client.read(&p).await {
            Ok(r) => r,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err("open", &p, e)),
        };
        let len = reader.file_length();
        reader
            .read_range(0, len)
            .await
            .map(Some)
            .map_err(|e| self.err("read", &p, e))
    }

    async fn list(&self, dir: &str) -> Result<Vec<DirEntry>, ArchiveError> {
        let p = self.abs(dir);
        let statuses = match self.client.list_status(&p, false).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Ok(Vec::new()),
            Err(e) => return Err(self.err("list", &p, e)),
        };
        let mut out: Vec<DirEntry> = statuses
            .into_iter()
            .filter_map(|s| {
                let name = s.path.rsplit('/').next().unwrap_or_default().to_string();
                (!name.is_empty() && !name.starts_with('.')).then_some(DirEntry {
                    name,
                    is_dir: s.isdir,
                    len: if s.isdir { 0 } else { s.length as u64 },
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete(&self, path: &str) -> Result<bool, ArchiveError> {
        let p = self.abs(path);
        match self.client.delete(&p, false).await {
            Ok(deleted) => Ok(deleted),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(self.err("delete", &p, e)),
        }
    }
}
