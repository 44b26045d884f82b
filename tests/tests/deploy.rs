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
    let (_, out, err) =
        run(Command::new("systemd-analyze").args(["verify", "--no-pager", copy.to_str().unwrap()]));
    assert!(
        format!("{out}{err}").contains("camfleet-agent.service:"),
        "{out}{err}"
    );
}

/// A variable of scripts/services.d/versions.sh (tool paths in the cache).
fn pinned(var: &str) -> String {
    let versions = repo().join("scripts/services.d/versions.sh");
    let (ok, out, err) = run(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && printf %s \"${var}\"",
        versions.display()
    )));
    assert!(ok && !out.is_empty(), "{var} from versions.sh: {err}");
    out
}

/// The files a kustomization.yaml lists under `resources:`.
fn kustomize_resources(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("resources:"))
        .skip(1)
        .map_while(|l| l.strip_prefix("  - "))
        .map(|f| dir.join(f.trim()))
        .collect()
}

/// kubectl-validate against the Kubernetes 1.30 schemas built into it; no
/// cluster and no kubeconfig, so nothing is fetched.
fn kubectl_validate(files: &[PathBuf]) -> (bool, String) {
    let home = tempfile::tempdir().unwrap();
    let (ok, out, err) = run(Command::new(pinned("KUBECTL_VALIDATE"))
        .args(files)
        .args(["--version", "1.30"])
        .env("HOME", home.path())
        .env("KUBECONFIG", home.path().join("none")));
    (ok, format!("{out}{err}"))
}

#[test]
fn deploy_kubernetes_manifests_validate_offline_and_match_the_collector() {
    let k8s = repo().join("deploy/k8s");
    let files = kustomize_resources(&k8s);
    let kinds: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for kind in [
        "kind: Deployment",
        "kind: ConfigMap",
        "kind: Secret",
        "kind: Service",
        "kind: PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "deploy/k8s lacks a {kind}");
    }
    let (ok, report) = kubectl_validate(&files);
    assert!(ok, "kubectl-validate:\n{report}");

    // The check can fail: a wrong type and an unknown field are caught.
    let dir = tempfile::tempdir().unwrap();
    let deployment = std::fs::read_to_string(k8s.join("deployment.yaml")).unwrap();
    for (what, broken) in [
        (
            "a string for replicas",
            deployment.replace("replicas: 3", "replicas: three"),
        ),
        (
            "an unknown field",
            deployment.replace("revisionHistoryLimit: 3", "revisionHistoryLimt: 3"),
        ),
    ] {
        let file = dir.path().join("deployment.yaml");
        std::fs::write(&file, broken).unwrap();
        let (ok, report) = kubectl_validate(&[file]);
        assert!(!ok, "kubectl-validate accepted {what}:\n{report}");
    }

    // The ConfigMap's collector.toml passes the collector's own validate,
    // and serves HTTP on the port the probes and the scrape annotation use.
    let configmap = std::fs::read_to_string(k8s.join("configmap.yaml")).unwrap();
    let toml: String = configmap
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("collector.toml: |"))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("listen = \"0.0.0.0:9464\""), "{toml}");
    let config = dir.path().join("collector.toml");
    std::fs::write(&config, &toml).unwrap();
    let (ok, out, err) = run(Command::new(binary("camfleet-collector")).args([
        "validate",
        "--config",
        config.to_str().unwrap(),
    ]));
    assert!(ok, "collector validate on the ConfigMap:\n{out}{err}");
    assert!(deployment.contains("containerPort: 9464"));
    assert!(deployment.contains("path: /healthz") && deployment.contains("path: /readyz"));
    let service = std::fs::read_to_string(k8s.join("service.yaml")).unwrap();
    assert!(service.contains("prometheus.io/port: \"9464\""));
}

/// The newest `<name>_*_amd64.deb` that scripts/package left in the target dir.
fn built_deb(name: &str) -> PathBuf {
    let target = binary("camfleet-agent")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&target)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/package", target.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy();
            f.starts_with(&format!("{name}_")) && f.ends_with("_amd64.deb")
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    debs.pop().unwrap_or_else(|| {
        panic!(
            "no {name} .deb in {}: run scripts/package",
            target.display()
        )
    })
}

fn dpkg(args: &[&str]) -> (bool, String) {
    let (ok, out, err) = run(Command::new("dpkg")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    (ok, format!("{out}{err}"))
}

/// Processes running this executable (none may be started by dpkg).
fn running(exe: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path().join("exe")).ok())
        .filter(|p| p == Path::new(exe))
        .count()
}

fn systemd_unit_path(unit: &str) -> PathBuf {
    ["/lib/systemd/system", "/usr/lib/systemd/system"]
        .iter()
        .map(|d| Path::new(d).join(unit))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{unit} not installed"))
}

/// The package's metadata and file list, as dpkg-deb reads them.
fn check_deb_contents(deb: &Path, name: &str, config: &str) {
    let (ok, info, err) = run(Command::new("dpkg-deb").arg("-I").arg(deb));
    assert!(ok, "dpkg-deb -I: {err}");
    for field in [
        format!("Package: {name}"),
        "Architecture: amd64".to_string(),
        "Depends:".into(),
        "libc6".into(),
        "conffiles".into(),
        "postinst".into(),
        "postrm".into(),
    ] {
        assert!(
            info.contains(&field),
            "{name}: no {field} in dpkg-deb -I:\n{info}"
        );
    }
    let (ok, list, err) = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    assert!(ok, "dpkg-deb -c: {err}");
    for path in [
        format!("./usr/bin/{name}"),
        format!("./etc/camfleet/{config}"),
        format!("/systemd/system/{name}.service"),
        format!("./usr/share/doc/{name}/deploy.md"),
    ] {
        assert!(
            list.contains(&path),
            "{name}: no {path} in dpkg-deb -c:\n{list}"
        );
    }
    let (_, conffiles, _) = run(Command::new("dpkg-deb")
        .args(["-I"])
        .arg(deb)
        .arg("conffiles"));
    assert!(
        conffiles
            .lines()
            .any(|l| l == format!("/etc/camfleet/{config}")),
        "{name}: conffiles: {conffiles}"
    );
}

#[test]
fn deploy_deb_packages_install_enable_remove_and_purge_cleanly() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "installing packages needs root (CI runs as root)"
    );
    let agent_deb = built_deb("camfleet-agent");
    let collector_deb = built_deb("camfleet-collector");
    check_deb_contents(&agent_deb, "camfleet-agent", "agent.toml");
    check_deb_contents(&collector_deb, "camfleet-collector", "collector.toml");
    assert!(
        run(Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&agent_deb)
            .arg("Depends"))
        .1
        .contains("adduser"),
        "the agent's postinst needs adduser"
    );
    // Leftovers of an interrupted earlier run.
    for p in ["camfleet-agent", "camfleet-collector"] {
        dpkg(&["--purge", p]);
    }

    // Install: binary, config, unit enabled but not started, user in video.
    let (ok, log) = dpkg(&["-i", agent_deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i agent:\n{log}");
    let (ok, groups, _) = run(Command::new("id").args(["-nG", "camfleet"]));
    assert!(
        ok && groups.split_whitespace().any(|g| g == "video"),
        "groups: {groups}"
    );
    let (_, owner, _) = run(Command::new("stat").args(["-c", "%U:%G %a", "/var/lib/camfleet"]));
    assert_eq!(owner.trim(), "camfleet:camfleet 750");
    let (ok, version, _) = run(Command::new("/usr/bin/camfleet-agent").arg("--version"));
    assert!(
        ok && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    // The unit's ExecStartPre, as the service user, on the shipped config.
    let (ok, out, err) = run(Command::new("runuser").args([
        "-u",
        "camfleet",
        "--",
        "/usr/bin/camfleet-agent",
        "validate",
        "--config",
        "/etc/camfleet/agent.toml",
    ]));
    assert!(ok, "validate as camfleet:\n{out}{err}");
    let unit = systemd_unit_path("camfleet-agent.service");
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(repo().join("systemd/camfleet-agent.service")).unwrap()
    );
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["verify", "--no-pager", unit.to_str().unwrap()]));
    assert!(
        ok && !format!("{out}{err}").contains("camfleet"),
        "verify installed unit:\n{out}{err}"
    );
    assert!(
        Path::new("/etc/systemd/system/multi-user.target.wants/camfleet-agent.service").exists(),
        "the unit is enabled at install"
    );
    assert_eq!(
        running("/usr/bin/camfleet-agent"),
        0,
        "dpkg started the agent"
    );

    // Remove keeps the state and the (edited) config; purge deletes both.
    std::fs::write("/var/lib/camfleet/seq-state-marker", b"kept").unwrap();
    let mut config = std::fs::read_to_string("/etc/camfleet/agent.toml").unwrap();
    config.push_str("\n# edited by the installer\n");
    std::fs::write("/etc/camfleet/agent.toml", &config).unwrap();
    let (ok, log) = dpkg(&["--remove", "camfleet-agent"]);
    assert!(ok, "dpkg --remove:\n{log}");
    assert!(!Path::new("/usr/bin/camfleet-agent").exists());
    assert!(!unit.exists());
    assert!(
        Path::new("/var/lib/camfleet/seq-state-marker").exists(),
        "remove deleted state"
    );
    assert_eq!(
        std::fs::read_to_string("/etc/camfleet/agent.toml").unwrap(),
        config
    );
    let (ok, log) = dpkg(&["--purge", "camfleet-agent"]);
    assert!(ok, "dpkg --purge:\n{log}");
    assert!(
        !Path::new("/var/lib/camfleet").exists(),
        "purge left the state"
    );
    assert!(
        !Path::new("/etc/camfleet/agent.toml").exists(),
        "purge left the config"
    );
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/camfleet-agent.service").exists()
    );

    // The collector: install, validate its shipped config, verify, purge.
    let (ok, log) = dpkg(&["-i", collector_deb.to_str().unwrap()]);
    assert!(ok, "dpkg -i collector:\n{log}");
    let (ok, out, err) = run(Command::new("/usr/bin/camfleet-collector").args([
        "validate",
        "--config",
        "/etc/camfleet/collector.toml",
    ]));
    assert!(ok, "collector validate:\n{out}{err}");
    let unit = systemd_unit_path("camfleet-collector.service");
    let (ok, out, err) =
        run(Command::new("systemd-analyze").args(["verify", "--no-pager", unit.to_str().unwrap()]));
    assert!(
        ok && !format!("{out}{err}").contains("camfleet"),
        "verify:\n{out}{err}"
    );
    assert_eq!(
        running("/usr/bin/camfleet-collector"),
        0,
        "dpkg started the collector"
    );
    let (ok, log) = dpkg(&["--purge", "camfleet-collector"]);
    assert!(ok, "dpkg --purge collector:\n{log}");
    assert!(!Path::new("/usr/bin/camfleet-collector").exists());
    assert!(
        !Path::new("/etc/camfleet").exists(),
        "/etc/camfleet left behind"
    );
}

/// One Dockerfile instruction per entry (continuation lines joined,
/// comments dropped): (keyword, arguments).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut line = String::new();
    for raw in text.lines() {
        let trimmed = raw.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && line.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => line.push_str(part),
            None => {
                line.push_str(trimmed);
                let (key, args) = line.split_once(' ').unwrap_or((&line, ""));
                out.push((key.to_uppercase(), args.trim().to_string()));
                line.clear();
            }
        }
    }
    out
}

/// Files in `dir` that a Dockerfile COPY source with at most one `*` names.
fn copy_matches(dir: &Path, pattern: &str) -> usize {
    let (prefix, suffix) = pattern.split_once('*').unwrap_or((pattern, ""));
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| {
            if pattern.contains('*') {
                f.starts_with(prefix) && f.ends_with(suffix) && f.len() >= pattern.len() - 1
            } else {
                f == pattern
            }
        })
        .count()
}

/// The collector image (deploy/container/Dockerfile) cannot be built here:
/// no container engine runs on this machine and its base image cannot be
/// pulled (docs/deploy.md "On Kubernetes"). What can be checked is: every
/// COPY source exists in the build context docs/deploy.md tells you to
/// make, the ENTRYPOINT is the binary the package installs and it runs,
/// the CMD's config path is where the Deployment mounts the ConfigMap, the
/// non-root USER can read the config, and EXPOSE matches the probes' port.
#[test]
fn deploy_container_context_has_its_sources_and_the_entrypoint_runs() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/container/Dockerfile")).unwrap();
    let steps = dockerfile_instructions(&dockerfile);
    let arg = |key: &str| -> Vec<String> {
        steps
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let json = |key: &str| -> Vec<String> {
        let args = arg(key);
        assert_eq!(args.len(), 1, "one {key} in the Dockerfile: {args:?}");
        serde_json::from_str(&args[0])
            .unwrap_or_else(|e| panic!("{key} {} is not exec form: {e}", args[0]))
    };

    // The build context as docs/deploy.md makes it: the Dockerfile and the
    // collector .deb from scripts/package.
    let context = tempfile::tempdir().unwrap();
    let copies: Vec<String> = arg("COPY");
    assert!(!copies.is_empty(), "no COPY in the Dockerfile");
    for copy in &copies {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (_dest, sources) = words.split_last().expect("COPY <src>... <dest>");
        for source in sources {
            assert_eq!(
                copy_matches(context.path(), source),
                0,
                "{source} matched an empty context"
            );
        }
    }
    let deb = built_deb("camfleet-collector");
    std::fs::copy(&deb, context.path().join(deb.file_name().unwrap())).unwrap();
    std::fs::copy(
        repo().join("deploy/container/Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    for copy in &copies {
        let words: Vec<&str> = copy.split_whitespace().collect();
        let (_dest, sources) = words.split_last().unwrap();
        for source in sources {
            assert_eq!(
                copy_matches(context.path(), source),
                1,
                "COPY {source}: not exactly one file in the build context"
            );
        }
    }

    // The RUN step installs that package; its files, unpacked here.
    let root = tempfile::tempdir().unwrap();
    let (ok, _, err) = run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root.path()));
    assert!(ok, "dpkg-deb -x: {err}");
    let entrypoint = json("ENTRYPOINT");
    let exe = root.path().join(entrypoint[0].trim_start_matches('/'));
    assert!(
        exe.exists(),
        "ENTRYPOINT {} is not in the package",
        entrypoint[0]
    );
    let (ok, out, err) = run(Command::new(&exe).arg("--version"));
    assert!(ok, "{} --version: {err}", entrypoint[0]);
    assert_eq!(
        out.trim(),
        format!("camfleet-collector {}", env!("CARGO_PKG_VERSION"))
    );

    // CMD: `run --config <path>`, where the Deployment mounts collector.toml.
    let cmd = json("CMD");
    assert_eq!(cmd[..2], ["run", "--config"], "CMD {cmd:?}");
    let config = &cmd[2];
    let deployment = std::fs::read_to_string(repo().join("deploy/k8s/deployment.yaml")).unwrap();
    assert!(
        deployment.contains(&format!("mountPath: {config}")),
        "the Deployment mounts no config at {config}"
    );
    // Without a mount the packaged default is used; the image's user (not
    // root, not in the package's groups) must be able to read it and run
    // the binary.
    let user = arg("USER");
    assert_eq!(user.len(), 1, "one USER: {user:?}");
    assert!(
        !user[0].starts_with('0') && user[0] != "root",
        "USER {user:?}"
    );
    let (ok, list, err) = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    assert!(ok, "dpkg-deb -c: {err}");
    for (path, mode) in [
        (config.as_str(), "-rw-r--r--"),
        (&entrypoint[0], "-rwxr-xr-x"),
    ] {
        let line = list
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("{path} not in the package:\n{list}"));
        assert!(
            line.starts_with(mode),
            "{line}: USER {} needs {mode}",
            user[0]
        );
    }
    let (ok, out, err) = run(Command::new(&exe)
        .args(["validate", "--config"])
        .arg(root.path().join(config.trim_start_matches('/'))));
    assert!(ok, "validate of the image's default config: {out}{err}");

    // EXPOSE is the port the probes and the scrape annotation use.
    let expose = arg("EXPOSE");
    assert_eq!(expose, ["9464"], "EXPOSE");
    assert!(deployment.contains("containerPort: 9464"));
}

/// The collector image really built, by Debian's buildah (chroot isolation,
/// vfs storage, a private store in a temp dir), from deploy/container with
/// the collector .deb. `debian:bookworm-slim` cannot be pulled here, so a
/// Debian 12 minbase root fs (scripts/setup: debootstrap from Debian's
/// archive) is imported under that name first. The image's ENTRYPOINT then
/// runs as its USER and validates the config at the CMD's path.
#[test]
fn deploy_container_image_builds_with_buildah_and_runs_as_its_user() {
    let cache = std::env::var("CAMFLEET_CACHE")
        .unwrap_or_else(|_| format!("{}/.cache/camfleet", std::env::var("HOME").expect("HOME")));
    let base = Path::new(&cache).join("container-base/bookworm-minbase.tar");
    assert!(
        base.exists(),
        "{} missing: run scripts/setup",
        base.display()
    );
    let store = tempfile::tempdir().unwrap();
    let buildah = |args: &[&str]| -> String {
        let (ok, out, err) = run(Command::new("buildah")
            .arg("--storage-driver=vfs")
            .arg("--root")
            .arg(store.path().join("root"))
            .arg("--runroot")
            .arg(store.path().join("run"))
            .args(args));
        assert!(ok, "buildah {args:?}:\n{out}{err}");
        out
    };
    let scratch = buildah(&["from", "scratch"]);
    buildah(&["add", scratch.trim(), base.to_str().unwrap(), "/"]);
    buildah(&[
        "commit",
        "-q",
        scratch.trim(),
        "docker.io/library/debian:bookworm-slim",
    ]);

    let context = tempfile::tempdir().unwrap();
    let deb = built_deb("camfleet-collector");
    std::fs::copy(&deb, context.path().join(deb.file_name().unwrap())).unwrap();
    std::fs::copy(
        repo().join("deploy/container/Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    let image = "localhost/camfleet/collector:test";
    buildah(&[
        "bud",
        "--isolation=chroot",
        "--pull-never",
        "-t",
        image,
        context.path().to_str().unwrap(),
    ]);
    let config = buildah(&[
        "inspect",
        "--format",
        "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}}",
        image,
    ]);
    assert_eq!(
        config.trim(),
        "65532:65532 [/usr/bin/camfleet-collector] [run --config /etc/camfleet/collector.toml]"
    );
    let container = buildah(&["from", "--pull-never", image]);
    let version = buildah(&[
        "run",
        "--isolation=chroot",
        "--user",
        "65532:65532",
        container.trim(),
        "--",
        "/usr/bin/camfleet-collector",
        "--version",
    ]);
    assert_eq!(
        version.trim(),
        format!("camfleet-collector {}", env!("CARGO_PKG_VERSION"))
    );
    buildah(&[
        "run",
        "--isolation=chroot",
        "--user",
        "65532:65532",
        container.trim(),
        "--",
        "/usr/bin/camfleet-collector",
        "validate",
        "--config",
        "/etc/camfleet/collector.toml",
    ]);
}
