//! CPU clocks, child-process accounting, percentiles and PSNR.
//!
//! CPU time rather than wall time is the unit of cost: the benchmark machine
//! is shared, and CPU time is what another process steals least of.

use anyhow::{bail, Context};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the clock ids used are always supported on Linux.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime({id})");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// User + system CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// User + system CPU time of this process, all threads.
pub fn process_cpu() -> Duration {
    clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn timeval(tv: libc::timeval) -> Duration {
    Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000)
}

/// Waits for `child` and returns its exit status and its own user + system
/// CPU time (from `wait4`, so other children do not count).
pub fn wait_with_cpu(child: Child) -> anyhow::Result<(ExitStatus, Duration)> {
    let (status, user, sys) = wait_with_user_sys(child)?;
    Ok((status, user + sys))
}

/// Like [`wait_with_cpu`], with user and system time apart (user time leaves
/// out page-fault noise when only computation is compared).
pub fn wait_with_user_sys(child: Child) -> anyhow::Result<(ExitStatus, Duration, Duration)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: all-zero is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `pid` is our unreaped child; the pointers are valid out-params.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err).context("wait4");
        }
    }
    // `child` is reaped now; dropping it only closes its pipes.
    drop(child);
    Ok((
        ExitStatus::from_raw(status),
        timeval(usage.ru_utime),
        timeval(usage.ru_stime),
    ))
}

/// Nearest-rank percentile of sorted samples (the agent's stats use the same rule).
pub fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// `ffmpeg` with the flags every call here wants.
pub fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-nostdin", "-y"]);
    c
}

/// Mean luma PSNR of the first `frames` pictures of an Annex-B H.264 file
/// against the Y4M it was encoded from, by ffmpeg's psnr filter.
///
/// A raw .h264 stream has no timestamps (ffmpeg assumes 25 fps) while the
/// Y4M has its own rate, so both sides are renumbered 0, 1, 2, ... in the
/// same time base: the filter then pairs pictures by index, not by clock.
pub fn psnr_y(encoded: &Path, reference: &Path, frames: u64) -> anyhow::Result<f64> {
    luma_metric(encoded, reference, frames, "psnr", "PSNR y:")
}

/// Mean luma SSIM, paired like [`psnr_y`], by ffmpeg's ssim filter.
pub fn ssim_y(encoded: &Path, reference: &Path, frames: u64) -> anyhow::Result<f64> {
    luma_metric(encoded, reference, frames, "ssim", "SSIM Y:")
}

/// Runs ffmpeg's `filter` (psnr or ssim) over the pictures paired by index
/// and reads the luma value after `marker` in its summary line.
fn luma_metric(
    encoded: &Path,
    reference: &Path,
    frames: u64,
    filter: &str,
    marker: &str,
) -> anyhow::Result<f64> {
    let out = ffmpeg()
        .args(["-loglevel", "info", "-i"])
        .arg(encoded)
        .arg("-i")
        .arg(reference)
        .args([
            "-lavfi",
            &format!(
                "[0:v]settb=1/30,setpts=N[a];[1:v]settb=1/30,setpts=N[b];[a][b]{filter}=shortest=1"
            ),
            "-frames:v",
            &frames.to_string(),
            "-f",
            "null",
            "-",
        ])
        .stdout(Stdio::null())
        .output()
        .with_context(|| format!("run ffmpeg ({filter})"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("ffmpeg {filter} failed on {}: {log}", encoded.display());
    }
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once(marker)?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no `{marker}` in ffmpeg output: {log}"))
}
