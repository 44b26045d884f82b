//! The model registry on real HDFS (docs/learning.md): versions and the
//! `current` pointer written through the archive's HDFS backend, checked by
//! the Java FsShell (an independent peer); a promotion is picked up by two
//! polling sources (two collector instances), a corrupt version forced into
//! `current` is refused by both while the previous keeps serving, and
//! `camfleet-collector model rollback` restores the previous version in both.

use camfleet_collector::archive::AnyArchive;
use camfleet_collector::learn::model::ModelSource;
use camfleet_collector::learn::registry::{ModelName, Registry};
use camfleet_collector::learn::source::RegistryModelSource;
use camfleet_collector::learn::{synthetic, trainer};
use camfleet_shared::config::LearningConfig;
use camfleet_tests::Services;
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_hdfs_promotes_refuses_and_rolls_back_in_every_instance() {
    let services = Services::get();
    let ort = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from);
    assert!(
        ort.is_some(),
        "ORT_DYLIB_PATH is not set: source .services/env"
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = format!("/learn-registry-{nanos}");
    let root = format!("{}{base}", services.hdfs.trim_end_matches('/'));
    let open = || async { Registry::new(AnyArchive::open(&root).await.unwrap()) };
    let registry = open().await;
    let cfg = LearningConfig {
        min_labels: 40,
        ..LearningConfig::default()
    };
    let name = ModelName::parse("verifier@depot@gate").unwrap();
    let data = synthetic::poster_and_people("depot/gate", 400, 8, 41);

    let first = trainer::verifier_candidate(&registry, &cfg, &name, &data, ort.as_deref())
        .await
        .unwrap();
    assert!(first.better, "{}", first.reason);
    let v1 = registry.add_version(&name, &first.files).await.unwrap();
    trainer::promote(&registry, &cfg, &name, &v1, None, false, ort.as_deref())
        .await
        .unwrap();
    let second = trainer::verifier_candidate(
        &registry,
        &cfg,
        &name,
        &synthetic::poster_and_people("depot/gate", 400, 8, 42),
        ort.as_deref(),
    )
    .await
    .unwrap();
    let v2 = registry.add_version(&name, &second.files).await.unwrap();
    trainer::promote(&registry, &cfg, &name, &v2, None, true, ort.as_deref())
        .await
        .unwrap();

    // The peer sees the layout and the pointer.
    let dir = format!("{base}/_models/verifier@depot@gate");
    let listing = services.hdfs_shell(&["-ls", "-R", &dir]);
    for f in [
        "model.onnx",
        "manifest.toml",
        "metrics.json",
        "training-data.json",
    ] {
        assert!(
            listing.contains(&format!("{dir}/{v1}/{f}"))
                && listing.contains(&format!("{dir}/{v2}/{f}")),
            "{f} missing:\n{listing}"
        );
    }
    assert!(
        !listing.contains(".tmp"),
        "temporary files left:\n{listing}"
    );
    let current: serde_json::Value =
        serde_json::from_str(&services.hdfs_shell(&["-cat", &format!("{dir}/current")])).unwrap();
    assert_eq!(current["version"], v2.as_str());
    assert_eq!(current["previous"], serde_json::json!([v1]));

    // Two instances pick v2 up.
    let a = RegistryModelSource::new(ort.clone());
    let b = RegistryModelSource::new(ort.clone());
    a.poll(&registry).await.unwrap();
    b.poll(&open().await).await.unwrap();
    assert_eq!(a.verifier("depot/gate").unwrap().version(), v2);
    assert_eq!(b.verifier("depot/gate").unwrap().version(), v2);

    // A corrupt version forced into `current`: both keep serving v2.
    let mut corrupt = first.files.clone();
    corrupt.onnx = b"definitely not an ONNX model".to_vec().into();
    let bad = registry.add_version(&name, &corrupt).await.unwrap();
    assert!(
        trainer::promote(&registry, &cfg, &name, &bad, None, true, ort.as_deref())
            .await
            .is_err(),
        "promote refuses a model that does not load"
    );
    registry.set_current(&name, &bad).await.unwrap();
    a.poll(&registry).await.unwrap();
    b.poll(&registry).await.unwrap();
    assert_eq!(a.verifier("depot/gate").unwrap().version(), v2);
    assert_eq!(b.verifier("depot/gate").unwrap().version(), v2);

    // Rollback from the command line, twice: bad -> v2 -> v1.
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\n\n[archive]\nroot = \"{root}\"\n",
            services.kafka
        ),
    )
    .unwrap();
    for want in [&v2, &v1] {
        let out = Command::new(camfleet_tests::binary("camfleet-collector"))
            .args(["model", "rollback", "verifier@depot@gate", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(&format!("current {want}")),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    a.poll(&registry).await.unwrap();
    b.poll(&open().await).await.unwrap();
    assert_eq!(a.verifier("depot/gate").unwrap().version(), v1);
    assert_eq!(b.verifier("depot/gate").unwrap().version(), v1);
    services.hdfs_shell(&["-rm", "-r", "-skipTrash", &base]);
}
