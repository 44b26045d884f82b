//! Deployment artefacts checked by their own tools: the systemd units by
//! `systemd-analyze` (verify, and the security exposure score).
//!
//! Test names start with `deploy_`: they need no broker, so `scripts/test`
//! runs them once (phase 1), not again on three Kafka nodes.

use camfleet_tests::binary;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs it)"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `systemd-analyze security --offline=true` on a unit file: the overall
/// exposure (0 = locked down, 10 = none).
fn exposure(unit: &Path) -> f64 {
    let (_, out, err) = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--no-pager",
        unit.to_str().unwrap(),
    ]));
    let text = format!("{out}{err}");
    text.lines()
        .find_map(|l| {
            let (_, rest) = l.split_once("Overall exposure level for ")?;
            rest.split_once(": ")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"))
}

#[test]
fn deploy_systemd_units_verify_and_expose_at_most_2() {
    let dir = tempfile::tempdir().unwrap();
    for bin in ["camfleet-agent", "camfleet-collector"] {
        let unit = format!("{bin}.service");
        let text = std::fs::read_to_string(repo().join("systemd").join(&unit)).unwrap();
        for must in [
            "Type=notify".to_string(),
            "WatchdogSec=".into(),
            format!("ExecStartPre=/usr/bin/{bin} validate --config /etc/camfleet/"),
            format!("ExecStart=/usr/bin/{bin} run --config /etc/camfleet/"),
            "Restart=on-failure".into(),
            "StartLimitBurst=".into(),
            "StateDirectory=".into(),
        ] {
            assert!(text.contains(&must), "{unit} lacks {must}");
        }
        // verify checks that the commands exist: point them at the binaries
        // just built (the package installs them in /usr/bin).
        let bin_dir = binary(bin).parent().unwrap().to_path_buf();
        let copy = dir.path().join(&unit);
        std::fs::write(
            &copy,
            text.replace("/usr/bin/", &format!("{}/", bin_dir.display())),
        )
        .unwrap();
        let (ok, out, err) = run(Command::new("systemd-analyze").args([
            "verify",
            "--no-pager",
            copy.to_str().unwrap(),
        ]));
        // Unknown settings and bad values are warnings that name the file.
        assert!(
            ok && !format!("{out}{err}").contains(&unit),
            "systemd-analyze verify {unit}:\n{out}{err}"
        );
        let score = exposure(&copy);
        eprintln!("{unit}: systemd-analyze security exposure {score}");
        assert!(score <= 2.0, "{unit}: exposure {score} > 2.0");
    }
}

#[test]
fn deploy_systemd_verify_catches_a_broken_unit() {
    // The check above can fail: a typo'd setting is reported with the file.
    let dir = tempfile::tempdir().unwrap();
    let bin_dir = binary("camfleet-agent").parent().unwrap().to_path_buf();
    let text = std::fs::read_to_string(repo().join("systemd/camfleet-agent.service"))
        .unwrap()
        .replace("/usr/bin/", &format!("{}/", bin_dir.display()))
        .replace("Type=notify", "Type=notifyy");
    let copy = dir.path().join("camfleet-agent.service");
    std::fs::write(&copy, text).unwrap();
    let (_, out, err) = run(Command::new("systemd-analyze").args([
        "verify",
        "--no-pager",
        copy.to_str().unwrap(),
    ]));
    assert!(
        format!("{out}{err}").contains("camfleet-agent.service:"),
        "{out}{err}"
    );
}
