//! YUV4MPEG2 file source (4:2:0 8-bit only).
//!
//! Y4M is what `ffmpeg -i any.mp4 -pix_fmt yuv420p out.y4m` writes: a text
//! header line, then per frame a `FRAME` line and the raw planes. The format is
//! a dozen lines to parse, so no crate is used.

use super::{pace, FrameSource, RawFrame, SourceError, VideoFormat};
use camfleet_shared::wire::Rational;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Instant;

pub struct Y4mFile {
    path: String,
    reader: BufReader<File>,
    data_start: u64,
    format: VideoFormat,
    looping: bool,
    paced: bool,
    next: u64,
    start: Instant,
}

impl Y4mFile {
    pub fn open(path: &Path, looping: bool, paced: bool) -> Result<Self, SourceError> {
        let shown = path.display().to_string();
        let io = |error| SourceError::Io {
            path: shown.clone(),
            error,
        };
        let mut reader = BufReader::new(File::open(path).map_err(io)?);
        let mut header = Vec::new();
        reader
            .by_ref()
            .take(4096)
            .read_until(b'\n', &mut header)
            .map_err(io)?;
        let format = parse_header(&header).map_err(|reason| SourceError::Y4m {
            path: shown.clone(),
            reason,
        })?;
        // Counted, not asked of the file: a FIFO (`ffmpeg -f yuv4mpegpipe`)
        // cannot seek, and only looping needs the position.
        let data_start = header.len() as u64;
        Ok(Self {
            path: shown,
            reader,
            data_start,
            format,
            looping,
            paced,
            next: 0,
            start: Instant::now(),
        })
    }

    /// Reads the next picture into `pic`; false at end of file.
    fn read_frame(&mut self, pic: &mut Vec<u8>) -> Result<bool, SourceError> {
        let io = |error| SourceError::Io {
            path: self.path.clone(),
            error,
        };
        let mut line = Vec::new();
        let n = self
            .reader
            .by_ref()
            .take(1024)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        if !line.starts_with(b"FRAME") || line.last() != Some(&b'\n') {
            let at = match self.reader.stream_position() {
                Ok(end) => format!("at byte {}", end - n as u64),
                Err(_) => "in the stream".to_string(),
            };
            return Err(SourceError::Y4m {
                path: self.path.clone(),
                reason: format!(
                    "{at}: expected a FRAME line before frame {} (found {:?})",
                    self.next,
                    String::from_utf8_lossy(&line[..line.len().min(16)])
                ),
            });
        }
        // Only a new buffer's first use pays for zeroing; read_exact overwrites it all.
        pic.resize(self.format.i420_len(), 0);
        match self.reader.read_exact(pic) {
            Ok(()) => Ok(true),
            // A truncated last frame (a recording cut short) ends the file.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(io(e)),
        }
    }
}

fn parse_header(line: &[u8]) -> Result<VideoFormat, String> {
    let text = std::str::from_utf8(line).map_err(|_| "header is not text".to_string())?;
    let text = text
        .strip_suffix('\n')
        .ok_or("header line is missing or longer than 4096 bytes")?;
    let mut parts = text.split(' ');
    if parts.next() != Some("YUV4MPEG2") {
        return Err("does not start with YUV4MPEG2".into());
    }
    let (mut w, mut h, mut fps) = (None, None, None);
    for p in parts {
        let (tag, val) = p.split_at(p.len().min(1));
        match tag {
            "W" => w = val.parse::<u32>().ok(),
            "H" => h = val.parse::<u32>().ok(),
            "F" => {
                fps = val
                    .split_once(':')
                    .and_then(|(n, d)| Rational::new(n.parse().ok()?, d.parse().ok()?))
            }
            "C" if !val.starts_with("420") || val.contains("p10") || val.contains("p12") => {
                return Err(format!(
                    "colour space C{val} is not 8-bit 4:2:0; convert with -pix_fmt yuv420p"
                ))
            }
            "I" if val != "p" && val != "?" => {
                return Err(format!("interlaced (I{val}) video is not supported"))
            }
            _ => {}
        }
    }
    let width = w.ok_or("no valid W (width) tag")?;
    let height = h.ok_or("no valid H (height) tag")?;
    if width == 0 || height == 0 || width % 2 != 0 || height % 2 != 0 {
        return Err(format!(
            "{width}x{height}: width and height must be even and > 0"
        ));
    }
    Ok(VideoFormat {
        width,
        height,
        fps: fps.ok_or("no valid F (frame rate) tag")?,
    })
}

impl FrameSource for Y4mFile {
    fn format(&self) -> VideoFormat {
        self.format
    }

    fn next_frame(&mut self, mut pic: Vec<u8>) -> Result<Option<RawFrame>, SourceError> {
        if !self.read_frame(&mut pic)? {
            if !(self.looping && self.next > 0) {
                return Ok(None);
            }
            self.reader
                .seek(SeekFrom::Start(self.data_start))
                .map_err(|error| SourceError::Io {
                    path: self.path.clone(),
                    error,
                })?;
            if !self.read_frame(&mut pic)? {
                return Ok(None);
            }
        }
        if self.paced {
            pace(self.start, self.format.fps, self.next);
        }
        let frame = RawFrame {
            index: self.next,
            i420: pic,
            captured_us: None,
        };
        self.next += 1;
        Ok(Some(frame))
    }

    fn is_live(&self) -> bool {
        self.paced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write_y4m(header: &str, frames: usize, frame_len: usize) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(header.as_bytes()).unwrap();
        for i in 0..frames {
            f.write_all(b"FRAME\n").unwrap();
            f.write_all(&vec![i as u8; frame_len]).unwrap();
        }
        f
    }

    #[test]
    fn reads_frames_and_loops() {
        let f = write_y4m("YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg\n", 2, 12);
        let mut src = Y4mFile::open(f.path(), true, false).unwrap();
        assert_eq!(src.format().fps, Rational::new(25, 1).unwrap());
        let bytes: Vec<u8> = (0..5)
            .map(|_| src.next_frame(Vec::new()).unwrap().unwrap().i420[0])
            .collect();
        assert_eq!(bytes, [0, 1, 0, 1, 0]);
    }

    #[test]
    fn reuses_the_buffer_it_is_given() {
        let f = write_y4m("YUV4MPEG2 W4 H2 F25:1\n", 2, 12);
        let mut src = Y4mFile::open(f.path(), false, false).unwrap();
        let first = src.next_frame(Vec::new()).unwrap().unwrap().i420;
        let ptr = first.as_ptr();
        let second = src.next_frame(first).unwrap().unwrap().i420;
        assert_eq!((second.as_ptr(), second[0]), (ptr, 1));
    }

    #[test]
    fn stops_at_end_without_loop() {
        let f = write_y4m("YUV4MPEG2 W4 H2 F25:1\n", 1, 12);
        let mut src = Y4mFile::open(f.path(), false, false).unwrap();
        assert!(src.next_frame(Vec::new()).unwrap().is_some());
        assert!(src.next_frame(Vec::new()).unwrap().is_none());
    }

    #[test]
    fn rejects_what_it_cannot_read_with_a_reason() {
        for (header, want) in [
            ("YUV4MPEG2 W4 H2 F25:1 C444\n", "C444"),
            ("YUV4MPEG2 W4 H2 F25:1 C420p10\n", "4:2:0"),
            ("YUV4MPEG2 H2 F25:1\n", "W (width)"),
            ("YUV4MPEG2 W4 H2 F25:1 It\n", "interlaced"),
            ("RIFF....\n", "YUV4MPEG2"),
        ] {
            let f = write_y4m(header, 0, 0);
            let err = Y4mFile::open(f.path(), false, false)
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(want), "{header:?}: {err}");
        }
    }

    #[test]
    fn a_malformed_frame_is_rejected_with_its_byte_offset() {
        let header = "YUV4MPEG2 W4 H2 F25:1\n";
        let mut f = write_y4m(header, 2, 12);
        f.write_all(b"GARBAGE!\n").unwrap();
        let mut src = Y4mFile::open(f.path(), false, false).unwrap();
        assert!(src.next_frame(Vec::new()).unwrap().is_some());
        assert!(src.next_frame(Vec::new()).unwrap().is_some());
        let err = src.next_frame(Vec::new()).unwrap_err().to_string();
        let offset = header.len() + 2 * (6 + 12);
        assert!(
            err.contains(&format!(
                "at byte {offset}: expected a FRAME line before frame 2"
            )),
            "{err}"
        );
        assert!(err.contains("GARBAGE"), "{err}");
    }
}
