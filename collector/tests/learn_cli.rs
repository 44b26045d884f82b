//! `camfleet-collector train` and `model list|show|promote|rollback|import`
//! as ops run them, on a local archive and real ONNX Runtime
//! (ORT_DYLIB_PATH from .services/env; scripts/test sets it).

use camfleet_collector::learn::{synthetic, table};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ort_env() -> PathBuf {
    let dylib = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        dylib.as_deref().is_some_and(Path::is_file),
        "ORT_DYLIB_PATH is not set or not a file: run scripts/setup and scripts/services up, \
         then `source .services/env` (scripts/test does this)"
    );
    dylib.unwrap()
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    /// No collector runs here to score live traffic, so `train` promotes on
    /// the held-out gate (`shadow = false`); the live shadow is proven in
    /// tests/tests/learning_loop.rs.
    fn new() -> Self {
        ort_env();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("collector.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap_servers = \"127.0.0.1:9\"\n\n[archive]\nroot = \"{}\"\n\n\
                 [learning]\nmin_labels = 40\nshadow = false\n",
                dir.path().join("archive").display()
            ),
        )
        .unwrap();
        Self { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_camfleet-collector"));
        cmd.args(args);
        // Every subcommand takes --config, after its own words.
        cmd.arg("--config").arg(&self.config);
        let out = cmd.output().unwrap();
        eprintln!(
            "$ camfleet-collector {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed");
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).display().to_string()
    }
}

/// Second word of `<name> <version>: ...`.
fn version_of(line: &str) -> String {
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string()
}

#[test]
fn train_show_import_promote_rollback_from_the_command_line() {
    let s = Setup::new();
    let labels = s.path("labels.parquet");
    let data = synthetic::poster_and_people("depot/gate", 400, 8, 21);
    std::fs::write(&labels, table::write_labelled(&data, 80)).unwrap();
    let frames = s.path("frames.parquet");
    std::fs::write(
        &frames,
        table::write_frames("depot/gate", &synthetic::normal_scene(300, 8, 22)),
    )
    .unwrap();

    // --dry-run evaluates and writes nothing.
    let out = s.ok(&["train", "--labels", &labels, "--dry-run"]);
    assert!(
        out.contains("verifier@depot@gate (dry run, nothing written): better"),
        "{out}"
    );
    assert!(out.contains("\"baseline\""), "{out}");
    assert!(!s.dir.path().join("archive/_models").exists());

    // A real run promotes the verifier and the scene model.
    let out = s.ok(&["train", "--labels", &labels, "--frames", &frames]);
    let verifier_line = out
        .lines()
        .find(|l| l.starts_with("verifier@depot@gate"))
        .unwrap();
    assert!(verifier_line.contains("promoted"), "{out}");
    let v1 = version_of(verifier_line);
    assert!(
        out.lines()
            .any(|l| l.starts_with("scene@depot@gate") && l.contains("promoted")),
        "{out}"
    );
    let list = s.ok(&["model", "list"]);
    assert!(
        list.contains(&format!("verifier@depot@gate\tcurrent {v1}")),
        "{list}"
    );
    let show = s.ok(&["model", "show", "verifier@depot@gate", &v1]);
    assert!(
        show.contains("kind = \"verifier\"") && show.contains("\"precision\""),
        "{show}"
    );

    // A model trained elsewhere enters through import + promote; a corrupt
    // one is refused at import with the reason, and nothing is written.
    let elsewhere = s.dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let version_dir = s
        .dir
        .path()
        .join(format!("archive/_models/verifier@depot@gate/{v1}"));
    for f in ["model.onnx", "manifest.toml"] {
        std::fs::copy(version_dir.join(f), elsewhere.join(f)).unwrap();
    }
    std::fs::write(
        elsewhere.join("metrics.json"),
        r#"{"shadow": {"better": true}, "spark": {"auc": 0.99}}"#,
    )
    .unwrap();
    let dir = elsewhere.display().to_string();
    let out = s.ok(&["model", "import", "--name", "verifier@depot@gate", &dir]);
    let imported = version_of(out.lines().next().unwrap());
    // Its own claim of being better is not taken: promote needs our gate.
    let err = s.fails(&["model", "promote", "verifier@depot@gate", &imported]);
    assert!(err.contains("no shadow evaluation"), "{err}");
    // Same weights as the current one: not better on the held-out labels.
    let err = s.fails(&[
        "model",
        "promote",
        "verifier@depot@gate",
        &imported,
        "--labels",
        &labels,
    ]);
    assert!(err.contains("not better"), "{err}");
    s.ok(&[
        "model",
        "promote",
        "verifier@depot@gate",
        &imported,
        "--force",
    ]);

    std::fs::write(elsewhere.join("model.onnx"), b"not a model at all").unwrap();
    let before = s.ok(&["model", "show", "verifier@depot@gate"]);
    let err = s.fails(&["model", "import", "--name", "verifier@depot@gate", &dir]);
    assert!(err.contains("cannot load model.onnx"), "{err}");
    assert_eq!(s.ok(&["model", "show", "verifier@depot@gate"]), before);

    // Rollback restores the trained version.
    let out = s.ok(&["model", "rollback", "verifier@depot@gate"]);
    assert!(out.contains(&format!("current {v1}")), "{out}");
    let err = s.fails(&["model", "rollback", "verifier@depot@gate"]);
    assert!(err.contains("nothing to roll back"), "{err}");
    let err = s.fails(&["model", "show", "verifier@depot@gate@x"]);
    assert!(err.contains("model name"), "{err}");
    let err = s.fails(&["model", "show", "verifier@depot@yard"]);
    assert!(err.contains("no model verifier@depot@yard"), "{err}");
}
