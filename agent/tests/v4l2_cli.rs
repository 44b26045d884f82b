//! `probe` and `validate` of the built binary on a machine without cameras
//! (these build and CI machines have no /dev/video* and no V4L2 modules).

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_camfleet-agent");

fn has_cameras() -> bool {
    std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("video"))
}

#[test]
fn probe_without_cameras_says_so_and_exits_0() {
    let out = Command::new(AGENT).arg("probe").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if has_cameras() {
        // A machine with cameras lists them instead; the listing is checked
        // against the fake camera in the unit tests.
        assert!(stdout.contains("/dev/video"), "{stdout}");
    } else {
        assert_eq!(
            stdout,
            "no V4L2 capture devices found (looked for /dev/video*)\n"
        );
    }

    let out = Command::new(AGENT)
        .args(["probe", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = v["devices"].as_array().expect("devices is an array");
    assert_eq!(devices.is_empty(), !has_cameras(), "{v}");
}

#[test]
fn validate_names_the_camera_and_the_missing_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"
data_dir = "{}"
[kafka]
bootstrap_servers = "127.0.0.1:19092"
[[camera]]
id = "depot/door"
source = {{ kind = "v4l2", device = "/dev/video-camfleet-missing", width = 640, height = 480 }}
"#,
            dir.path().display()
        ),
    )
    .unwrap();
    let out = Command::new(AGENT)
        .args(["validate", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("camera depot/door: device /dev/video-camfleet-missing: not found"),
        "{stderr}"
    );
}
