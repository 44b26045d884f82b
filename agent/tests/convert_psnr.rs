//! Camera pixel formats -> I420, checked against ffmpeg's own conversion of
//! the same fixture bytes (ffmpeg makes the fixtures too). PSNR per plane.

use camfleet_agent::source::convert::{nv12_to_i420, yuyv_to_i420, MjpegDecoder};
use std::path::Path;
use std::process::Command;

const W: u32 = 640;
const H: u32 = 360;
const FRAMES: usize = 2;

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs (scripts/setup installs it)");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn source_args() -> Vec<String> {
    // testsrc2 has sharp colour edges, the hard case for chroma subsampling.
    vec![
        "-f".into(),
        "lavfi".into(),
        "-i".into(),
        format!("testsrc2=size={W}x{H}:rate=1"),
        "-frames:v".into(),
        FRAMES.to_string(),
    ]
}

/// `fixture` (raw `pix_fmt`) converted by ffmpeg to yuv420p.
fn ffmpeg_i420(fixture: &Path, pix_fmt: &str, out: &Path) -> Vec<u8> {
    ffmpeg(&[
        "-f",
        "rawvideo",
        "-pix_fmt",
        pix_fmt,
        "-s",
        &format!("{W}x{H}"),
        "-i",
        fixture.to_str().unwrap(),
        "-pix_fmt",
        "yuv420p",
        "-f",
        "rawvideo",
        out.to_str().unwrap(),
    ]);
    std::fs::read(out).unwrap()
}

fn make_raw(dir: &Path, pix_fmt: &str) -> Vec<u8> {
    let path = dir.join(format!("fixture.{pix_fmt}"));
    let mut args = source_args();
    args.extend(
        [
            "-pix_fmt",
            pix_fmt,
            "-f",
            "rawvideo",
            path.to_str().unwrap(),
        ]
        .map(String::from),
    );
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    std::fs::read(path).unwrap()
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let se: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let mse = se / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0 * 255.0 / mse).log10()
    }
}

/// PSNR of Y, U and V of one I420 frame.
fn plane_psnr(ours: &[u8], theirs: &[u8]) -> [f64; 3] {
    let (w, h) = (W as usize, H as usize);
    let (y, c) = (w * h, w * h / 4);
    [
        psnr(&ours[..y], &theirs[..y]),
        psnr(&ours[y..y + c], &theirs[y..y + c]),
        psnr(&ours[y + c..], &theirs[y + c..]),
    ]
}

fn assert_close(what: &str, ours: &[u8], theirs: &[u8], min_db: f64) {
    let p = plane_psnr(ours, theirs);
    eprintln!("{what}: PSNR Y {:.1} U {:.1} V {:.1} dB", p[0], p[1], p[2]);
    assert!(
        p.iter().all(|&d| d > min_db),
        "{what}: {p:?} dB, want > {min_db}"
    );
}

fn i420_len() -> usize {
    (W * H * 3 / 2) as usize
}

#[test]
fn yuyv_matches_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let yuyv = make_raw(dir.path(), "yuyv422");
    let theirs = ffmpeg_i420(
        &dir.path().join("fixture.yuyv422"),
        "yuyv422",
        &dir.path().join("ref"),
    );
    let frame_len = (W * H * 2) as usize;
    assert_eq!(yuyv.len(), FRAMES * frame_len);
    let mut ours = Vec::new();
    for i in 0..FRAMES {
        yuyv_to_i420(
            &yuyv[i * frame_len..][..frame_len],
            2 * W as usize,
            W,
            H,
            &mut ours,
        )
        .unwrap();
        assert_close(
            &format!("YUYV frame {i}"),
            &ours,
            &theirs[i * i420_len()..][..i420_len()],
            40.0,
        );
    }
}

#[test]
fn nv12_matches_ffmpeg() {
    let dir = tempfile::tempdir().unwrap();
    let nv12 = make_raw(dir.path(), "nv12");
    let theirs = ffmpeg_i420(
        &dir.path().join("fixture.nv12"),
        "nv12",
        &dir.path().join("ref"),
    );
    let frame_len = i420_len();
    let mut ours = Vec::new();
    for i in 0..FRAMES {
        nv12_to_i420(
            &nv12[i * frame_len..][..frame_len],
            W as usize,
            W,
            H,
            &mut ours,
        )
        .unwrap();
        // Same subsampling: only a shuffle, so identical bytes.
        assert_eq!(ours, theirs[i * frame_len..][..frame_len], "NV12 frame {i}");
        assert_close(
            &format!("NV12 frame {i}"),
            &ours,
            &theirs[i * frame_len..][..frame_len],
            40.0,
        );
    }
}

/// Camera-like MJPEG (4:2:2, as UVC webcams send) and ffmpeg's decode of each
/// JPEG to yuv420p.
fn mjpeg_fixtures(dir: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let pattern = dir.join("frame%d.jpg");
    let mut args = source_args();
    args.extend(
        [
            "-c:v",
            "mjpeg",
            "-pix_fmt",
            "yuvj422p",
            "-q:v",
            "3",
            // The standard tables (JPEG Annex K), as cameras use; ffmpeg's
            // default computes optimal ones per picture.
            "-huffman",
            "default",
            "-f",
            "image2",
            pattern.to_str().unwrap(),
        ]
        .map(String::from),
    );
    ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    (1..=FRAMES)
        .map(|i| {
            let jpg = dir.join(format!("frame{i}.jpg"));
            let out = dir.join(format!("frame{i}.yuv"));
            ffmpeg(&[
                "-i",
                jpg.to_str().unwrap(),
                "-pix_fmt",
                "yuv420p",
                "-f",
                "rawvideo",
                out.to_str().unwrap(),
            ]);
            (std::fs::read(jpg).unwrap(), std::fs::read(out).unwrap())
        })
        .collect()
}

#[test]
fn mjpeg_matches_ffmpegs_decode() {
    let dir = tempfile::tempdir().unwrap();
    let mut dec = MjpegDecoder::default();
    let mut ours = Vec::new();
    for (i, (jpeg, theirs)) in mjpeg_fixtures(dir.path()).iter().enumerate() {
        dec.decode_to_i420(jpeg, W, H, &mut ours).unwrap();
        assert_close(&format!("MJPEG frame {i}"), &ours, theirs, 35.0);
    }
}

/// Removes the DHT (Huffman table) segments, as many UVC cameras send
/// MJPEG: the decoder must use the standard tables (JPEG Annex K).
fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    while i + 4 <= jpeg.len() {
        let marker = jpeg[i + 1];
        let len = u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[i..]);
            break;
        }
        if marker != 0xC4 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
    out
}

#[test]
fn mjpeg_without_huffman_tables_decodes_like_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = mjpeg_fixtures(dir.path());
    let (jpeg, theirs) = &fixtures[0];
    // ffmpeg's mjpeg encoder writes the standard tables, so removing them
    // must not change a single pixel.
    let stripped = strip_dht(jpeg);
    assert!(stripped.len() < jpeg.len(), "fixture had DHT segments");
    let mut dec = MjpegDecoder::default();
    let (mut with, mut without) = (Vec::new(), Vec::new());
    dec.decode_to_i420(jpeg, W, H, &mut with).unwrap();
    dec.decode_to_i420(&stripped, W, H, &mut without).unwrap();
    assert_eq!(with, without);
    assert_close("MJPEG without DHT", &without, theirs, 35.0);
}

#[test]
fn corrupt_mjpeg_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = mjpeg_fixtures(dir.path());
    let jpeg = &fixtures[0].0;
    let mut dec = MjpegDecoder::default();
    let mut out = Vec::new();
    let truncated = &jpeg[..jpeg.len() / 3];
    let e = dec.decode_to_i420(truncated, W, H, &mut out).unwrap_err();
    assert!(e.to_string().starts_with("bad MJPEG frame"), "{e}");
    let mut flipped = jpeg.clone();
    // Garbage over the SOF header and tables.
    for b in &mut flipped[2..300] {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    assert!(dec.decode_to_i420(&flipped, W, H, &mut out).is_err());
    let e = dec.decode_to_i420(jpeg, W / 2, H, &mut out).unwrap_err();
    assert!(
        e.to_string().contains("is 640x360, expected 320x360"),
        "{e}"
    );
    // The decoder still works after all that.
    dec.decode_to_i420(jpeg, W, H, &mut out).unwrap();
}
