//! The aarch64 agent built by `cross/build` (Debian's rustc-web, gcc cross
//! compilers) runs under qemu-user on this x86-64 machine and streams a test
//! pattern to the real local Kafka; the frames decode on x86 with their
//! frame numbers in order. Named `deploy_*`: runs once, in phase 1.

use camfleet_agent::source::test_pattern::read_frame_number;
use camfleet_tests::*;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TARGET: &str = "aarch64-unknown-linux-gnu";

/// The cross-built agent (cross/build writes it to the cached cross target dir).
fn cross_agent() -> PathBuf {
    let cache = std::env::var("CAMFLEET_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/camfleet", std::env::var("HOME").expect("HOME")));
    let dir = std::env::var("CAMFLEET_CROSS_TARGET_DIR")
        .unwrap_or_else(|_| format!("{cache}/cross-target"));
    let bin = PathBuf::from(dir)
        .join(TARGET)
        .join("release/camfleet-agent");
    assert!(
        bin.exists(),
        "{} missing: run cross/build {TARGET} (scripts/test does)",
        bin.display()
    );
    bin
}

#[test]
fn deploy_cross_aarch64_agent_streams_to_kafka_under_qemu() {
    let bin = cross_agent();
    let run = Scenario::new("qemu-aarch64", 1);
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
    let mut child = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .args(["run", "--config", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .env("RUST_LOG", "info,librdkafka=warn")
        .spawn()
        .expect("qemu-aarch64 (cross/build installs qemu-user)");
    // 3 s of video; emulation makes encoding slower, so allow much more.
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the aarch64 agent did not finish; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        status.success(),
        "aarch64 agent: {status}; log:\n{}",
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
    // Encoded on ARM (openh264 with its NEON code), decoded here.
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
fn deploy_cross_arm64_package_holds_the_aarch64_agent_and_plain_depends() {
    let dir = cross_agent()
        .parent()
        .and_then(|p| p.parent())
        .and_then(|p| p.parent())
        .expect("cross target dir")
        .join("debian");
    let deb = dir.join(format!(
        "camfleet-agent_{}-1_arm64.deb",
        env!("CARGO_PKG_VERSION")
    ));
    assert!(
        deb.exists(),
        "{} missing: run scripts/package --target {TARGET} agent",
        deb.display()
    );
    let field = |name: &str| {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(field("Architecture"), "arm64");
    // An arm64 box resolves these natively; no `:arm64` qualifiers.
    let depends = field("Depends");
    assert!(
        depends.contains("libc6 (>=") && !depends.contains(':'),
        "{depends}"
    );
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
        file.contains("ARM aarch64") && !file.contains("not stripped"),
        "{file}"
    );
    let version = Command::new("qemu-aarch64")
        .args(["-L", "/usr/aarch64-linux-gnu"])
        .arg(&bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("camfleet-agent {}", env!("CARGO_PKG_VERSION"))
    );
}
