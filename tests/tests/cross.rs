//! The ARM agents built by `cross/build` (Debian's rustc-web, gcc cross
//! compilers) run under qemu-user on this x86-64 machine and stream a test
//! pattern to the real local Kafka; the frames decode on x86 with their
//! frame numbers in order. Their `.deb` packages (scripts/package --target)
//! are read back with dpkg-deb. Named `deploy_*`: runs once, in phase 1.

use camfleet_agent::source::test_pattern::read_frame_number;
use camfleet_tests::*;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One ARM target as cross/build and scripts/package name it.
struct Arm {
    triple: &'static str,
    /// Debian's architecture name (the .deb's `Architecture:`).
    deb_arch: &'static str,
    /// qemu-user binary and the cross package's sysroot (ld.so + libc).
    qemu: &'static str,
    sysroot: &'static str,
    /// What `file` says about an executable for this target.
    file_says: &'static str,
    /// openh264's NEON SAD routine for this target (upstream's
    /// `codec/encoder/core/arm*/pixel_*neon.S`).
    neon_sad: &'static str,
}

const AARCH64: Arm = Arm {
    triple: "aarch64-unknown-linux-gnu",
    deb_arch: "arm64",
    qemu: "qemu-aarch64",
    sysroot: "/usr/aarch64-linux-gnu",
    file_says: "ARM aarch64",
    neon_sad: "WelsSampleSad16x16_AArch64_neon",
};

const ARMV7: Arm = Arm {
    triple: "armv7-unknown-linux-gnueabihf",
    deb_arch: "armhf",
    qemu: "qemu-arm",
    sysroot: "/usr/arm-linux-gnueabihf",
    file_says: "ARM, EABI5",
    neon_sad: "WelsSampleSad16x16_neon",
};

/// The cross target dir (cross/build's cache unless overridden).
fn cross_dir() -> PathBuf {
    let cache = std::env::var("CAMFLEET_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/camfleet", std::env::var("HOME").expect("HOME")));
    PathBuf::from(
        std::env::var("CAMFLEET_CROSS_TARGET_DIR")
            .unwrap_or_else(|_| format!("{cache}/cross-target")),
    )
}

/// The cross-built agent for `arm`.
fn cross_agent(arm: &Arm) -> PathBuf {
    let bin = cross_dir().join(arm.triple).join("release/camfleet-agent");
    assert!(
        bin.exists(),
        "{} missing: run cross/build {} (scripts/test does)",
        bin.display(),
        arm.triple
    );
    bin
}

/// `qemu-<arch> -L <sysroot> <bin>`: how an ARM executable runs here.
fn under_qemu(arm: &Arm, bin: &Path) -> Command {
    let mut cmd = Command::new(arm.qemu);
    cmd.args(["-L", arm.sysroot]).arg(bin);
    cmd
}

/// Streams 30 frames from the cross-built agent under qemu to Kafka and
/// decodes them here.
fn streams_to_kafka_under_qemu(arm: &Arm) {
    let bin = cross_agent(arm);
    let run = Scenario::new(arm.qemu, 1);
    let (w, h, n) = (160u32, 120u32, 30u64);
    let config = run.agent_config(
        &PatternCamera {
            id: "arm/pattern",
            width: w,
            height: h,
            fps: 10,
            frames: n,
            paced: true,
        },
        "",
        "",
    );
    let file = run.dir.path().join("agent.toml");
    std::fs::write(&file, config).unwrap();
    let log = run.dir.path().join("agent.log");
    let mut child = under_qemu(arm, &bin)
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .env("RUST_LOG", "info,librdkafka=warn")
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (cross/build installs qemu-user)", arm.qemu));
    // 3 s of video; emulation makes encoding slower, so allow much more.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the {} agent did not finish; log:\n{}",
                arm.triple,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "{} agent: {status}; log:\n{}",
        arm.triple,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let summary: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(delivered(&summary), n, "{summary}");

    let frames = read_topic(&run.services, &run.topic);
    let check = check_stream(&frames, "arm/pattern");
    assert_eq!(
        (check.distinct, check.duplicates, check.missing.len()),
        (n, 0, 0)
    );
    // Encoded on ARM (openh264's C code; the crate assembles only x86),
    // decoded here.
    let mut decoder = Decoder::new().unwrap();
    for (i, f) in frames.iter().enumerate() {
        let yuv = decoder.decode(&f.payload).unwrap().expect("a picture");
        assert_eq!(
            read_frame_number(yuv.y(), w, yuv.strides().0),
            Some(i as u64)
        );
    }
}

#[test]
fn deploy_cross_aarch64_agent_streams_to_kafka_under_qemu() {
    streams_to_kafka_under_qemu(&AARCH64);
}

#[test]
fn deploy_cross_armv7_agent_streams_to_kafka_under_qemu() {
    streams_to_kafka_under_qemu(&ARMV7);
}

/// The ARM agent encodes with openh264's NEON assembly, not only its C
/// code: binutils' `nm` finds the target's NEON routines defined in the
/// binary (the linker keeps only routines the encoder's tables reference).
fn links_openh264_neon(arm: &Arm) {
    let bin = cross_agent(arm);
    let out = Command::new("nm")
        .arg(&bin)
        .output()
        .expect("nm (binutils)");
    assert!(out.status.success(), "nm {}", bin.display());
    let symbols = String::from_utf8_lossy(&out.stdout);
    let neon: Vec<&str> = symbols
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, "T", name] if name.starts_with("Wels") && name.ends_with("_neon") => Some(name),
            _ => None,
        })
        .collect();
    assert!(
        neon.contains(&arm.neon_sad),
        "{} lacks openh264's {} ({} Wels*_neon routines linked)",
        bin.display(),
        arm.neon_sad,
        neon.len()
    );
    assert!(
        neon.len() >= 40,
        "only {} of openh264's NEON routines linked into {}",
        neon.len(),
        bin.display()
    );
}

#[test]
fn deploy_cross_aarch64_agent_links_openh264_neon_assembly() {
    links_openh264_neon(&AARCH64);
}

#[test]
fn deploy_cross_armv7_agent_links_openh264_neon_assembly() {
    links_openh264_neon(&ARMV7);
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    assert!(
        out.status.success(),
        "dpkg-deb {args:?} {}: {}",
        deb.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The ARM agent package: its metadata and file list as dpkg-deb reads
/// them (the same layout as the amd64 package), plain Depends an ARM box
/// resolves natively, and a stripped binary for the target that answers
/// `--version` and validates the packaged config under qemu.
fn package_holds_the_agent(arm: &Arm) {
    let deb = cross_dir().join(arm.triple).join("debian").join(format!(
        "camfleet-agent_{}-1_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arm.deb_arch
    ));
    assert!(
        deb.exists(),
        "{} missing: run scripts/package --target {} agent",
        deb.display(),
        arm.triple
    );
    let info = dpkg_deb(&["-I"], &deb);
    for field in [
        "Package: camfleet-agent".to_string(),
        format!("Architecture: {}", arm.deb_arch),
        "conffiles".into(),
        "postinst".into(),
        "postrm".into(),
    ] {
        assert!(info.contains(&field), "no {field} in dpkg-deb -I:\n{info}");
    }
    // No `libc6:armhf`-style qualifiers: the box's own libc6 satisfies it.
    let depends = dpkg_deb(&["-f"], &deb)
        .lines()
        .find_map(|l| l.strip_prefix("Depends: ").map(str::to_string))
        .unwrap_or_default();
    assert!(
        depends.contains("libc6 (>=") && depends.contains("adduser") && !depends.contains(':'),
        "Depends: {depends}"
    );
    let conffiles = Command::new("dpkg-deb")
        .arg("-I")
        .arg(&deb)
        .arg("conffiles")
        .output()
        .unwrap();
    let conffiles = String::from_utf8_lossy(&conffiles.stdout);
    assert!(
        conffiles.lines().any(|l| l == "/etc/camfleet/agent.toml"),
        "conffiles: {conffiles}"
    );
    let list = dpkg_deb(&["-c"], &deb);
    for path in [
        "./usr/bin/camfleet-agent",
        "./etc/camfleet/agent.toml",
        "/systemd/system/camfleet-agent.service",
        "./usr/share/doc/camfleet-agent/deploy.md",
    ] {
        assert!(list.contains(path), "no {path} in dpkg-deb -c:\n{list}");
    }
    let work = tempfile::tempdir().unwrap();
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(work.path())
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let bin = work.path().join("usr/bin/camfleet-agent");
    let file = Command::new("file").arg(&bin).output().unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(
        file.contains(arm.file_says) && !file.contains("not stripped"),
        "{file}"
    );
    let version = under_qemu(arm, &bin).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("camfleet-agent {}", env!("CARGO_PKG_VERSION"))
    );
    // The packaged config, with its state dir moved into the temp dir.
    let config = std::fs::read_to_string(work.path().join("etc/camfleet/agent.toml")).unwrap();
    let state = work.path().join("state");
    let config: String = config
        .lines()
        .map(|l| {
            if l.starts_with("data_dir = ") {
                format!("data_dir = \"{}\"\n", state.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let file = work.path().join("agent.toml");
    std::fs::write(&file, config).unwrap();
    let validate = under_qemu(arm, &bin)
        .args(["validate", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        validate.status.success(),
        "validate under {}: {}{}",
        arm.qemu,
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );
}

#[test]
fn deploy_cross_arm64_package_holds_the_aarch64_agent_and_plain_depends() {
    package_holds_the_agent(&AARCH64);
}

#[test]
fn deploy_cross_armhf_package_holds_the_armv7_agent_and_plain_depends() {
    package_holds_the_agent(&ARMV7);
}
