//! HDFS archive through hdfs-native (a pure-Rust client: no JVM, no libhdfs).

use super::{temp_name, Archive, ArchiveError};
use bytes::Bytes;
use hdfs_native::{Client, ClientBuilder, WriteOptions};

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
        format!("{}/{}", self.base, path)
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
}
