//! Camera identity: `site/camera`, the Kafka key of every video record.

use std::fmt;
use std::str::FromStr;

/// A validated camera id of the form `site/camera`.
///
/// Both parts are 1..=64 characters of `[A-Za-z0-9_.-]`, and neither is `.` or
/// `..`, so the id can be used verbatim as two archive path components.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CameraId {
    full: String,
    slash: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid camera id {id:?}: {reason} (expected `site/camera`, each part 1-64 of A-Z a-z 0-9 _ . -)")]
pub struct CameraIdError {
    pub id: String,
    pub reason: &'static str,
}

impl CameraId {
    pub fn new(id: &str) -> Result<Self, CameraIdError> {
        let err = |reason| CameraIdError {
            id: id.to_string(),
            reason,
        };
        let slash = id
            .find('/')
            .ok_or_else(|| err("no `/` between site and camera"))?;
        let (site, camera) = (&id[..slash], &id[slash + 1..]);
        for part in [site, camera] {
            if part.is_empty() || part.len() > 64 {
                return Err(err("a part is empty or longer than 64 characters"));
            }
            if part == "." || part == ".." {
                return Err(err("a part is `.` or `..`"));
            }
            if !part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
            {
                return Err(err("a part has a character outside A-Z a-z 0-9 _ . -"));
            }
        }
        Ok(Self {
            full: id.to_string(),
            slash,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.full
    }

    pub fn site(&self) -> &str {
        &self.full[..self.slash]
    }

    pub fn camera(&self) -> &str {
        &self.full[self.slash + 1..]
    }
}

impl FromStr for CameraId {
    type Err = CameraIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for CameraId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for CameraId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CameraId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for CameraId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_site_and_camera() {
        let id = CameraId::new("depot-3/gate_1.east").unwrap();
        assert_eq!(id.site(), "depot-3");
        assert_eq!(id.camera(), "gate_1.east");
    }

    #[test]
    fn rejects_paths_that_escape_the_archive() {
        for bad in [
            "", "nosite", "/cam", "site/", "../cam", "site/..", "a/b/c", "a b/c", "s/ü",
        ] {
            assert!(CameraId::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
