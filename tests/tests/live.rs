//! Live view end to end: agent (paced test pattern, 1 s GOPs) -> Kafka ->
//! collector `[live]` -> HTTP. Independent peers check what is served:
//! curl (HTTP, headers, TLS), ffprobe (reads the live playlist as a player
//! would), ffmpeg (decodes a segment; the test pattern's frame numbers say
//! which frames it holds).

use camfleet_tests::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const CAMERA: &str = "live/gate";
const PLAYLIST: &str = "/live/live/gate/index.m3u8";

/// A response as curl saw it.
struct Resp {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// GET with curl (an independent HTTP client); `extra` are curl options.
fn curl(url: &str, extra: &[&str]) -> Resp {
    let dir = tempfile::tempdir().unwrap();
    let (h, b) = (dir.path().join("h"), dir.path().join("b"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15", "-D"])
        .arg(&h)
        .arg("-o")
        .arg(&b)
        .args(["-w", "%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl is installed by scripts/setup");
    let status = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    Resp {
        status,
        headers: std::fs::read_to_string(&h).unwrap_or_default(),
        body: std::fs::read(&b).unwrap_or_default(),
    }
}

/// The scenario's collector config with `http` and `[live]` tables.
fn live_collector_config(run: &Scenario, http: &str, live: &str) -> String {
    let root = run.dir.path().join("archive");
    run.collector_config(root.to_str().unwrap())
        .replace("[http]\nlisten = \"\"\n", &format!("{http}\n{live}\n"))
}

fn camera() -> PatternCamera<'static> {
    PatternCamera {
        id: CAMERA,
        width: 320,
        height: 192,
        // keyframe_interval_frames = 15 in the test agent config: 1 s GOPs.
        fps: 15,
        frames: 15 * 60,
        paced: true,
    }
}

/// Waits until the playlist lists at least `segments` whole segments.
fn wait_for_segments(base: &str, extra: &[&str], segments: usize) -> String {
    let mut last = String::new();
    wait_until(Duration::from_secs(45), "live segments", || {
        let r = curl(&format!("{base}{PLAYLIST}"), extra);
        last = r.text();
        r.status == 200 && last.matches("#EXTINF").count() >= segments
    });
    last
}

fn segment_uris(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| l.starts_with("seg/"))
        .map(str::to_string)
        .collect()
}

fn part_uris(playlist: &str, segment_name: &str) -> Vec<String> {
    let prefix = "#EXT-X-PART:";
    playlist
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.split("URI=\"").nth(1)?.split('"').next())
        .filter(|u| u.starts_with(&format!("part/{segment_name}.")))
        .map(str::to_string)
        .collect()
}

#[test]
fn live_hls_plays_in_ffprobe_with_immutable_segments_parts_and_blocking_reload() {
    let run = Scenario::new("live", 1);
    let addr = free_local_addr();
    let base = format!("http://{addr}");
    let config = live_collector_config(
        &run,
        &format!("[http]\nlisten = \"{addr}\"\ncors_allow_origins = [\"https://ops.example\"]"),
        "[live]\nplaylist_segments = 4\npart_target_ms = 200\ndetections_topic = \"\"",
    );
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    let _agent = run.agent(&camera(), "");
    let playlist = wait_for_segments(&base, &[], 3);

    // The playlist: LL-HLS tags, short cache lifetime.
    let r = curl(&format!("{base}{PLAYLIST}"), &[]);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("max-age=1"));
    for tag in [
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-PART-INF:PART-TARGET=0.200",
        "CAN-BLOCK-RELOAD=YES",
        "#EXT-X-PROGRAM-DATE-TIME:",
        "#EXT-X-PRELOAD-HINT:TYPE=PART",
    ] {
        assert!(playlist.contains(tag), "{tag} missing:\n{playlist}");
    }
    assert!(
        segment_uris(&playlist).len() <= 4,
        "window of 4:\n{playlist}"
    );

    // ffprobe reads the live stream through the playlist.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,width,height",
            "-of",
            "csv=p=0",
        ])
        .arg(format!("{base}{PLAYLIST}"))
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.lines().next(), Some("h264,320,192"), "{text}");

    // A whole segment: one GOP (15 consecutive frames from an IDR), with a
    // strong validator and a long, immutable cache lifetime.
    let seg = segment_uris(&playlist)[1].clone();
    let name = seg
        .trim_start_matches("seg/")
        .trim_end_matches(".ts")
        .to_string();
    let seg_url = format!("{base}/live/live/gate/{seg}");
    let r = curl(&seg_url, &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some("video/mp2t"));
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("public, max-age=31536000, immutable")
    );
    let etag = r.header("etag").expect("etag");
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let file = run.dir.path().join("seg.ts");
    std::fs::write(&file, &r.body).unwrap();
    let numbers = frame_numbers(&file, 320, 192);
    assert_eq!(numbers.len(), 15, "{numbers:?}");
    assert_eq!(numbers[0] % 15, 0, "starts at an IDR: {numbers:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    let again = curl(&seg_url, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    // Its parts, fetched one by one, are the segment's bytes.
    let playlist = curl(&format!("{base}{PLAYLIST}"), &[]).text();
    let last_seg = segment_uris(&playlist).last().unwrap().clone();
    let last_name = last_seg.trim_start_matches("seg/").trim_end_matches(".ts");
    let parts = part_uris(&playlist, last_name);
    assert_eq!(
        parts.len(),
        5,
        "15 frames at 15 fps in 200 ms parts: 3+3+3+3+3\n{playlist}"
    );
    let mut joined = Vec::new();
    for p in &parts {
        joined.extend(curl(&format!("{base}/live/live/gate/{p}"), &[]).body);
    }
    assert_eq!(
        joined,
        curl(&format!("{base}/live/live/gate/{last_seg}"), &[]).body
    );

    // Blocking reload: asking for the part after the preload hint's answers
    // once it exists, and the preload-hinted part itself is waited for.
    let hint = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let seq_line = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .unwrap();
    let open_msn: u64 = seq_line.parse::<u64>().unwrap() + segment_uris(&playlist).len() as u64;
    let t0 = Instant::now();
    let hinted = curl(&format!("{base}/live/live/gate/{hint}"), &[]);
    assert_eq!(hinted.status, 200, "{}", hinted.text());
    assert!(hinted.body.len().is_multiple_of(188) && !hinted.body.is_empty());
    let blocked = curl(
        &format!("{base}{PLAYLIST}?_HLS_msn={}&_HLS_part=0", open_msn + 1),
        &[],
    );
    assert_eq!(blocked.status, 200);
    // The answer holds part 0 of segment open_msn + 1: segment open_msn is
    // closed, and the next one has a part listed (or is closed too).
    let text = blocked.text();
    let first: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .unwrap()
        .parse()
        .unwrap();
    let closed = segment_uris(&text).len() as u64;
    let after_last = text.rsplit("seg/").next().unwrap();
    assert!(
        first + closed > open_msn + 1
            || (first + closed == open_msn + 1 && after_last.contains("#EXT-X-PART:")),
        "asked for part 0 of {}:\n{text}",
        open_msn + 1
    );
    let waited = t0.elapsed();
    // The next segment starts within a GOP (1 s) plus a part; far below the
    // 6 s block timeout, which would mean the wait never woke up.
    assert!(waited < Duration::from_secs(5), "blocked {waited:?}");
    let far = curl(&format!("{base}{PLAYLIST}?_HLS_msn={}", open_msn + 10), &[]);
    assert_eq!(far.status, 400);

    // A camera not consumed here: 404 with a hint.
    let other = curl(&format!("{base}/live/other/cam/index.m3u8"), &[]);
    assert_eq!(other.status, 404);
    let hint: serde_json::Value = serde_json::from_slice(&other.body).unwrap();
    assert!(hint["hint"].as_str().unwrap().contains("partition"));
    assert_eq!(hint["cameras_here"], serde_json::json!([CAMERA]));
    assert_eq!(
        curl(&format!("{base}/live/live/gate/seg/0-999999.ts"), &[]).status,
        404
    );

    // Health, as the page shows it.
    let cams: serde_json::Value =
        serde_json::from_slice(&curl(&format!("{base}/api/cameras"), &[]).body).unwrap();
    let cam = &cams["cameras"][0];
    assert_eq!(cam["camera"], CAMERA);
    let fps = cam["health"]["fps"].as_f64().unwrap();
    assert!((10.0..20.0).contains(&fps), "fps {fps}");
    assert_eq!(cam["health"]["gaps"], 0);
    assert_eq!(cam["health"]["width"], 320);
    assert!(cam["last_frame_age_ms"].as_u64().unwrap() < 2000, "{cam}");
    assert_eq!(cams["detections_available"], false);

    // CORS for the configured origin only; preflight answered.
    let allowed = curl(&seg_url, &["-H", "Origin: https://ops.example"]);
    assert_eq!(
        allowed.header("access-control-allow-origin").as_deref(),
        Some("https://ops.example")
    );
    let foreign = curl(&seg_url, &["-H", "Origin: https://evil.example"]);
    assert_eq!(foreign.header("access-control-allow-origin"), None);
    let preflight = curl(
        &seg_url,
        &[
            "-X",
            "OPTIONS",
            "-H",
            "Origin: https://ops.example",
            "-H",
            "Access-Control-Request-Method: GET",
        ],
    );
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("GET"));

    // Archive playback: a VOD playlist over the last minutes holds the
    // archived segments in order; their frames are the camera's first
    // frames, consecutive; ffprobe plays the playlist to the end.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let vod_path = format!(
        "/archive/live/gate/index.m3u8?from={}&to={}",
        now - 600,
        now + 60
    );
    let vod = curl(&format!("{base}{vod_path}"), &[]);
    assert_eq!(vod.status, 200, "{}", vod.text());
    let vod_text = vod.text();
    assert!(
        vod_text.contains("#EXT-X-PLAYLIST-TYPE:VOD") && vod_text.ends_with("#EXT-X-ENDLIST\n")
    );
    assert!(!vod_text.contains("#EXT-X-DISCONTINUITY"), "{vod_text}");
    let mut numbers = Vec::new();
    let mut local = String::new();
    for (i, uri) in segment_uris(&vod_text).iter().enumerate() {
        let url = format!("{base}/archive/live/gate/{uri}");
        let file = run.dir.path().join(format!("vod-{i}.ts"));
        std::fs::write(&file, curl(&url, &[]).body).unwrap();
        numbers.extend(frame_numbers(&file, 320, 192));
        local.push_str(&format!("{}\n", file.display()));
    }
    assert!(numbers.len() >= 30, "{numbers:?}");
    assert_eq!(numbers[0], 0);
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    let saved = run.dir.path().join("vod.m3u8");
    let mut lines = Vec::new();
    for l in vod_text.lines() {
        lines.push(if l.starts_with("seg/") {
            format!("{base}/archive/live/gate/{l}")
        } else {
            l.to_string()
        });
    }
    std::fs::write(&saved, lines.join("\n") + "\n").unwrap();
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-protocol_whitelist", "file,http,tcp"])
        .args(["-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&saved)
        .output()
        .expect("ffprobe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().next(),
        Some(format!("h264,{}", numbers.len()).as_str()),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = curl(
        &format!("{base}/archive/live/gate/index.m3u8?from=yesterday&to=1"),
        &[],
    );
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("`from`"), "{}", bad.text());
    assert_eq!(
        curl(
            &format!("{base}/archive/live/gate/seg/2026/11/30/18/..%2F..%2Fx.ts"),
            &[]
        )
        .status,
        400
    );
    let _ = local;

    // /metrics stays on the same listener.
    let metrics = curl(&format!("{base}/metrics"), &[]).text();
    assert!(
        metrics.contains("camfleet_collector_live_parts_published_total"),
        "{metrics}"
    );
    assert!(metrics.contains("camfleet_collector_frames_archived_total"));
    let _ = name;
}

/// A self-signed certificate for 127.0.0.1 made by openssl (a peer).
fn self_signed(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl req");
    (cert, key)
}

#[test]
fn live_auth_without_credentials_gets_401_and_nothing_else_over_tls() {
    let run = Scenario::new("liveauth", 1);
    let addr = free_local_addr();
    let base = format!("https://{addr}");
    let (cert, key) = self_signed(run.dir.path());
    let token = "tok-0123456789abcdef-XYZ";
    let tokens = run.dir.path().join("tokens");
    std::fs::write(&tokens, format!("# ops team\n{token}\n")).unwrap();
    let users = run.dir.path().join("users");
    std::fs::write(&users, "ops:correct horse\n").unwrap();
    let http = format!(
        "[http]\nlisten = \"{addr}\"\n[http.auth]\ntoken_file = \"{}\"\nusers_file = \"{}\"\n\
         [http.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"",
        tokens.display(),
        users.display(),
        cert.display(),
        key.display()
    );
    let config = live_collector_config(&run, &http, "[live]\ndetections_topic = \"\"");
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    let _agent = run.agent(&camera(), "");
    let ca = cert.to_str().unwrap();
    let bearer = format!("Authorization: Bearer {token}");
    let playlist = wait_for_segments(&base, &["--cacert", ca, "-H", &bearer], 2);
    let seg = segment_uris(&playlist)[0].clone();
    let seg_path = format!("/live/live/gate/{seg}");

    let paths = [
        "/",
        "/api/cameras",
        "/api/detections?camera=live/gate",
        PLAYLIST,
        seg_path.as_str(),
        "/metrics",
        "/vendor/hls.min.js",
        "/live/other/cam/index.m3u8",
        "/archive/live/gate/index.m3u8?from=0&to=86400",
        "/archive/live/gate/export.ts?from=0&to=86400",
        "/api/archive/live/gate?from=0&to=86400",
    ];
    let wrong_basic = ["-u", "ops:wrong"];
    let wrong_bearer = ["-H", "Authorization: Bearer tok-0123456789abcdef-XYy"];
    let wrong_cookie = ["-H", "Cookie: camfleet_token=guess"];
    for path in paths {
        for creds in [
            &[][..],
            &wrong_basic[..],
            &wrong_bearer[..],
            &wrong_cookie[..],
        ] {
            let mut args = vec!["--cacert", ca];
            args.extend_from_slice(creds);
            let r = curl(&format!("{base}{path}"), &args);
            assert_eq!(r.status, 401, "{path} {creds:?}");
            assert_eq!(r.text(), "unauthorized\n", "{path}");
            let all = format!("{}{}", r.headers, r.text());
            assert!(
                !all.contains("gate") && !all.contains("live/"),
                "{path} leaks: {all}"
            );
            assert!(r.header("www-authenticate").unwrap().contains("Bearer"));
        }
    }
    // The right credentials, each way.
    let ok = curl(
        &format!("{base}{seg_path}"),
        &["--cacert", ca, "-H", &bearer],
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("cache-control").as_deref(),
        Some("private, max-age=31536000, immutable"),
        "authenticated media must not sit in shared caches"
    );
    let basic = curl(
        &format!("{base}/api/cameras"),
        &["--cacert", ca, "-u", "ops:correct horse"],
    );
    assert_eq!(basic.status, 200);
    assert!(basic.text().contains(CAMERA));
    let bad_login = curl(&format!("{base}/login?token=nope"), &["--cacert", ca]);
    assert_eq!(bad_login.status, 401);
    assert_eq!(bad_login.header("set-cookie"), None);
    let login = curl(&format!("{base}/login?token={token}"), &["--cacert", ca]);
    assert_eq!(login.status, 303);
    let cookie = login.header("set-cookie").unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap();
    let page = curl(
        &format!("{base}/"),
        &["--cacert", ca, "-H", &format!("Cookie: {pair}")],
    );
    assert_eq!(page.status, 200);
    assert!(page.text().contains("hls.min.js"));
    let metrics = curl(&format!("{base}/metrics"), &["--cacert", ca, "-H", &bearer]).text();
    assert!(
        metrics.contains("camfleet_collector_http_requests_total{auth=\"denied\"}"),
        "{metrics}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer, and a client that
    // does not trust the certificate stops before sending anything.
    let plain = curl(&format!("http://{addr}{PLAYLIST}"), &["-H", &bearer]);
    assert_eq!(plain.status, 0);
    let untrusted = curl(&format!("{base}{PLAYLIST}"), &["-H", &bearer]);
    assert_eq!(untrusted.status, 0);
}

/// Two camera ids librdkafka's default partitioner (CRC-32 of the key)
/// puts on partitions 0 and 1 of a two-partition topic.
fn cameras_on_both_partitions() -> (String, String) {
    let on = |p: u32| {
        (0..)
            .map(|i| format!("two/cam{i}"))
            .find(|id| crc32fast::hash(id.as_bytes()) % 2 == p)
            .unwrap()
    };
    (on(0), on(1))
}

fn cameras_here(base: &str) -> Vec<String> {
    let r = curl(&format!("{base}/api/cameras"), &[]);
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| {
            v["cameras"].as_array().map(|a| {
                a.iter()
                    .filter_map(|c| c["camera"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn live_two_collectors_each_serve_their_partitions_cameras_and_one_takes_over() {
    let run = Scenario::new("livetwo", 2);
    let (c0, c1) = cameras_on_both_partitions();
    let addrs = [free_local_addr(), free_local_addr()];
    let bases: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let mut collectors: Vec<Option<Proc>> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let config = live_collector_config(
                &run,
                &format!("[http]\nlisten = \"{a}\""),
                "[live]\ndetections_topic = \"\"",
            );
            Some(run.spawn(&format!("collector-{i}"), "camfleet-collector", &config))
        })
        .collect();
    let cams = [c0.clone(), c1.clone()];
    let _agents: Vec<Proc> = cams
        .iter()
        .map(|id| run.agent(&PatternCamera { id, ..camera() }, ""))
        .collect();
    // The group gives each instance one partition, so one camera each.
    let mut owner = [0usize; 2];
    wait_until(
        Duration::from_secs(60),
        "each instance serving one camera",
        || {
            let here: Vec<Vec<String>> = bases.iter().map(|b| cameras_here(b)).collect();
            if here.iter().any(|h| h.len() != 1) {
                return false;
            }
            for (k, cam) in cams.iter().enumerate() {
                match here.iter().position(|h| h.contains(cam)) {
                    Some(i) => owner[k] = i,
                    None => return false,
                }
            }
            owner[0] != owner[1]
        },
    );
    for (k, cam) in cams.iter().enumerate() {
        let path = format!("/live/{cam}/index.m3u8");
        let mine = &bases[owner[k]];
        let other = &bases[1 - owner[k]];
        wait_until(Duration::from_secs(20), "owner's playlist", || {
            curl(&format!("{mine}{path}"), &[]).status == 200
        });
        let r = curl(&format!("{other}{path}"), &[]);
        assert_eq!(r.status, 404, "{}", r.text());
        let hint: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(hint["cameras_here"], serde_json::json!([cams[1 - k]]));
    }
    // SIGKILL the owner of the first camera: the other instance serves both
    // once the group has moved the partition (session timeout 6 s).
    let survivor = 1 - owner[0];
    collectors[owner[0]].take().unwrap().signal("KILL");
    for cam in &cams {
        let path = format!("/live/{cam}/index.m3u8");
        wait_until(
            Duration::from_secs(60),
            "the survivor serving both cameras",
            || {
                let r = curl(&format!("{}{path}", bases[survivor]), &[]);
                r.status == 200 && r.text().contains("#EXTINF")
            },
        );
    }
    drop(collectors);
}

/// Sum of `frames` over the timeline API's segments (0 while unreadable).
fn timeline_frames(timeline: &serde_json::Value) -> u64 {
    timeline["segments"]
        .as_array()
        .map_or(0, |s| s.iter().map(|r| r["frames"].as_u64().unwrap()).sum())
}

/// Archive playback on HDFS, from the index: two runs of one camera (the
/// restart starts a new stream epoch, a new media clock) are one VOD
/// playlist with one discontinuity; ffprobe plays it from the collector
/// over HTTP to the end; segments are immutable with strong ETags and
/// byte ranges; the timeline API lists both runs; the export endpoint
/// streams the range as one .ts that ffprobe reads with the expected
/// duration.
#[test]
fn archive_vod_from_hdfs_plays_across_an_epoch_change_with_ranges_and_export() {
    let run = Scenario::new("vod-hdfs", 1);
    let root = format!("{}/camfleet-test/{}", run.services.hdfs, run.topic);
    let addr = free_local_addr();
    let base = format!("http://{addr}");
    let config = run.collector_config(&root).replace(
        "[http]\nlisten = \"\"\n",
        &format!("[http]\nlisten = \"{addr}\"\n[live]\ndetections_topic = \"\"\n"),
    );
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    let cam = |frames| PatternCamera { frames, ..camera() };
    let t_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 5;
    run.agent(&cam(45), "")
        .wait_success(Duration::from_secs(60));
    run.agent(&cam(30), "")
        .wait_success(Duration::from_secs(60));
    let api = format!(
        "{base}/api/archive/{CAMERA}?from={t_start}&to={}",
        t_start + 600
    );
    let mut timeline = serde_json::Value::Null;
    wait_until(Duration::from_secs(60), "75 frames in the index", || {
        let r = curl(&api, &[]);
        timeline = serde_json::from_slice(&r.body).unwrap_or_default();
        r.status == 200 && timeline_frames(&timeline) == 75
    });
    let segs = timeline["segments"].as_array().unwrap();
    let epochs: std::collections::BTreeSet<u64> =
        segs.iter().map(|s| s["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs.len(), 2, "{timeline}");
    let from_us = segs[0]["start_capture_us"].as_i64().unwrap();
    let to_us = segs.last().unwrap()["end_capture_us"].as_i64().unwrap();
    let secs = |us: i64| format!("{}.{:06}", us / 1_000_000, us % 1_000_000);
    let range = format!("from={}&to={}", secs(from_us), secs(to_us));

    // The VOD playlist: both runs, one discontinuity between them.
    let vod_url = format!("{base}/archive/{CAMERA}/index.m3u8?{range}");
    let vod = curl(&vod_url, &[]);
    assert_eq!(vod.status, 200, "{}", vod.text());
    let text = vod.text();
    assert_eq!(text.matches("#EXT-X-DISCONTINUITY").count(), 1, "{text}");
    assert_eq!(
        text.matches("#EXT-X-PROGRAM-DATE-TIME").count(),
        2,
        "{text}"
    );
    let uris = segment_uris(&text);
    assert_eq!(uris.len(), segs.len(), "{text}");

    // ffprobe, an independent player, reads the playlist from the
    // collector and every frame of both runs.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&vod_url)
        .output()
        .expect("ffprobe");
    // (HLS lists the stream under its program too: the first line counts.)
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("75"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The segments hold the test pattern's frames: run 1 then run 2.
    let mut numbers = Vec::new();
    for (i, uri) in uris.iter().enumerate() {
        let file = run.dir.path().join(format!("vod-{i}.ts"));
        let r = curl(&format!("{base}/archive/{CAMERA}/{uri}"), &[]);
        assert_eq!(r.status, 200);
        std::fs::write(&file, &r.body).unwrap();
        numbers.extend(frame_numbers(&file, 320, 192));
    }
    assert_eq!(numbers, (0..45).chain(0..30).collect::<Vec<_>>());

    // A closed segment: immutable, strong ETag, 304, byte ranges.
    let closed = segs.iter().position(|s| s["complete"] == true).unwrap();
    let seg_url = format!("{base}/archive/{CAMERA}/{}", uris[closed]);
    let whole = curl(&seg_url, &[]);
    assert_eq!(
        whole.header("cache-control").as_deref(),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(whole.header("accept-ranges").as_deref(), Some("bytes"));
    let etag = whole.header("etag").unwrap();
    assert!(etag.starts_with('"') && !etag.starts_with("W/"), "{etag}");
    let again = curl(&seg_url, &["-H", &format!("If-None-Match: {etag}")]);
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    let part = curl(&seg_url, &["-H", "Range: bytes=188-375"]);
    assert_eq!(part.status, 206);
    assert_eq!(part.body, whole.body[188..376]);
    let len = whole.body.len();
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 188-375/{len}"))
    );
    let tail = curl(&seg_url, &["-H", "Range: bytes=-188"]);
    assert_eq!(tail.status, 206);
    assert_eq!(tail.body, whole.body[len - 188..]);
    let past = curl(&seg_url, &["-H", &format!("Range: bytes={len}-")]);
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{len}")));
    // A stale copy (If-Range with another validator) gets the whole file.
    let stale = curl(
        &seg_url,
        &["-H", "Range: bytes=0-9", "-H", "If-Range: \"0-00000000\""],
    );
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body, whole.body);
    // A name the index does not list is not served, whatever the archive holds.
    let unlisted = uris[closed].replace(".ts", "9.ts");
    assert_eq!(
        curl(&format!("{base}/archive/{CAMERA}/{unlisted}"), &[]).status,
        404
    );

    // The export endpoint: the range as one file on one timeline.
    let export = curl(&format!("{base}/archive/{CAMERA}/export.ts?{range}"), &[]);
    assert_eq!(export.status, 200);
    assert!(export
        .header("content-disposition")
        .is_some_and(|d| d.starts_with("attachment; filename=\"live_gate_")));
    let file = run.dir.path().join("export.ts");
    std::fs::write(&file, &export.body).unwrap();
    assert_eq!(
        frame_numbers(&file, 320, 192),
        (0..45).chain(0..30).collect::<Vec<_>>()
    );
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let duration: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(
        (duration - 5.0).abs() <= 1.0 / 15.0 + 0.01,
        "export lasts {duration} s"
    );

    // Bad requests name what is wrong.
    let bad = curl(&format!("{base}/api/archive/{CAMERA}?from=1&to=1"), &[]);
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("`to` must be after `from`"),
        "{}",
        bad.text()
    );
    let long = curl(
        &format!("{base}/archive/{CAMERA}/export.ts?from=0&to=90000"),
        &[],
    );
    assert_eq!(long.status, 400);
    assert!(long.text().contains("24 hours"), "{}", long.text());
    let empty = curl(
        &format!("{base}/archive/{CAMERA}/index.m3u8?from=1000&to=2000"),
        &[],
    );
    assert_eq!(empty.status, 404);
}

/// The camera list of `base`'s `/api/cameras` (Null while unreadable).
fn camera_api(base: &str) -> serde_json::Value {
    serde_json::from_slice(&curl(&format!("{base}/api/cameras"), &[]).body).unwrap_or_default()
}

/// `[live.fleet]` with real Mosquitto, real agents and two collectors in
/// one group on real Kafka: each instance announces the cameras it serves
/// and answers a request for the other's camera with 307 to the owner
/// (ffprobe, following it, plays the live stream from either address);
/// the camera API carries each camera's agent status and telemetry from
/// the agents' retained topics; an agent killed shows offline (its MQTT
/// will), and a collector killed stops being redirected to.
#[test]
fn live_fleet_redirects_to_the_owning_collector_and_shows_agent_status() {
    let run = Scenario::new("livefleet", 2);
    let prefix = format!("cf-{}", run.topic.replace('.', "-"));
    let (host, port) = mqtt_plain();
    let (c0, c1) = cameras_on_both_partitions();
    let cams = [c0.clone(), c1.clone()];
    let addrs = [free_local_addr(), free_local_addr()];
    let bases: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
    let mut collectors: Vec<Option<Proc>> = bases
        .iter()
        .enumerate()
        .map(|(i, base)| {
            let config = live_collector_config(
                &run,
                &format!("[http]\nlisten = \"{}\"", &base["http://".len()..]),
                &format!(
                    "[live]\ndetections_topic = \"\"\n[live.fleet]\nurl = \"mqtt://{host}:{port}\"\n\
                     topic_prefix = \"{prefix}\"\nkeep_alive_s = 5\nannounce_url = \"{base}\"\n\
                     instance_id = \"collector-{i}\""
                ),
            );
            Some(run.spawn(&format!("collector-{i}"), "camfleet-collector", &config))
        })
        .collect();
    let mut agents: Vec<Option<Proc>> = cams
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let mqtt = format!(
                "[mqtt]\nurl = \"mqtt://{host}:{port}\"\nagent_id = \"box-{i}\"\n\
                 topic_prefix = \"{prefix}\"\ntelemetry_period_s = 1\nkeep_alive_s = 5\n"
            );
            Some(run.agent_with(&PatternCamera { id, ..camera() }, "", &mqtt))
        })
        .collect();

    // Each instance serves one camera and knows where the other is.
    let mut owner = [0usize; 2];
    wait_until(
        Duration::from_secs(60),
        "each instance serving one camera, announced to the other",
        || {
            let apis: Vec<serde_json::Value> = bases.iter().map(|b| camera_api(b)).collect();
            for (k, cam) in cams.iter().enumerate() {
                let Some(i) = apis.iter().position(|a| {
                    a["cameras"]
                        .as_array()
                        .is_some_and(|l| l.len() == 1 && l[0]["camera"] == cam.as_str())
                }) else {
                    return false;
                };
                owner[k] = i;
                let elsewhere = &apis[1 - i]["elsewhere"];
                if *elsewhere != serde_json::json!([{"camera": cam, "url": bases[i]}]) {
                    return false;
                }
            }
            owner[0] != owner[1]
        },
    );
    for (k, cam) in cams.iter().enumerate() {
        let path = format!("/live/{cam}/index.m3u8");
        let (mine, other) = (&bases[owner[k]], &bases[1 - owner[k]]);
        wait_until(Duration::from_secs(20), "owner's playlist", || {
            curl(&format!("{mine}{path}"), &[]).status == 200
        });
        let r = curl(&format!("{other}{path}?_HLS_msn=1"), &[]);
        assert_eq!(r.status, 307, "{}", r.text());
        assert_eq!(
            r.header("location"),
            Some(format!("{mine}{path}?_HLS_msn=1"))
        );
        // ffprobe follows the redirect and reads the live stream.
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-rw_timeout", "15000000"])
            .args(["-show_entries", "stream=codec_name,width", "-of", "csv=p=0"])
            .arg(format!("{other}{path}"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().next(),
            Some("h264,320"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // Fleet status: each camera's agent, online, its telemetry.
    for (k, cam) in cams.iter().enumerate() {
        let mut row = serde_json::Value::Null;
        wait_until(Duration::from_secs(30), "agent status in the API", || {
            row = camera_api(&bases[owner[k]])["cameras"][0]["fleet"].clone();
            row["state"] == "online" && row["fps"].as_f64().is_some_and(|f| f > 10.0)
        });
        assert_eq!(row["agent_id"], format!("box-{k}"), "{cam}: {row}");
        assert_eq!(row["camera_up"], true, "{row}");
        assert_eq!(row["kafka"], "ok", "{row}");
        assert!(row["telemetry_age_s"].as_f64().unwrap() < 5.0, "{row}");
    }
    // A payload that is not JSON is ignored and counted; status stays.
    let out = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "-t"])
        .arg(format!("{prefix}/agents/box-0/status"))
        .args(["-m", "not json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    wait_until(Duration::from_secs(10), "rejected message counted", || {
        curl(&format!("{}/metrics", bases[owner[0]]), &[])
            .text()
            .contains("camfleet_collector_fleet_messages_rejected_total")
    });
    assert_eq!(
        camera_api(&bases[owner[0]])["cameras"][0]["fleet"]["state"],
        "online"
    );
    // An agent killed: the broker publishes its will, the API says offline.
    agents[0].take().unwrap().signal("KILL");
    wait_until(Duration::from_secs(30), "killed agent offline", || {
        let row = camera_api(&bases[owner[0]])["cameras"][0]["fleet"].clone();
        row["state"] == "offline" && row["reason"] == "connection lost"
    });

    // A collector killed: its will withdraws its cameras; the survivor
    // stops redirecting there and serves both once the group moved the
    // partition.
    let survivor = 1 - owner[1];
    collectors[owner[1]].take().unwrap().signal("KILL");
    let path = format!("/live/{c1}/index.m3u8");
    wait_until(Duration::from_secs(60), "the survivor serving it", || {
        curl(&format!("{}{path}", bases[survivor]), &[]).status == 200
    });
    assert_eq!(
        camera_api(&bases[survivor])["elsewhere"],
        serde_json::json!([])
    );
    drop(agents);
    drop(collectors);
}

/// Encodes `frames` test-pattern pictures (320x192, 15 fps, 1 s GOPs) with
/// the agent's encoder and produces them to the scenario's topic as camera
/// `CAMERA`, epoch 1, with capture times from `start_us` on: a recorded
/// stream replayed with the capture times a test needs (here: across an
/// hour boundary in the past, which a live agent cannot be asked for).
fn produce_recorded(run: &Scenario, frames: u64, start_us: u64) {
    use camfleet_agent::encode::H264Encoder;
    use camfleet_agent::source::{test_pattern, VideoFormat};
    use camfleet_shared::config::EncoderConfig;
    use camfleet_shared::wire::{self, Codec, FrameMeta, Rational};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    let fps = Rational::new(15, 1).unwrap();
    let (width, height) = (320, 192);
    let config = EncoderConfig {
        keyframe_interval_frames: 15,
        ..EncoderConfig::default()
    };
    let mut encoder = H264Encoder::new(VideoFormat { width, height, fps }, &config).unwrap();
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &run.services.kafka)
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    let camera = camfleet_shared::CameraId::new(CAMERA).unwrap();
    for i in 0..frames {
        let au = encoder
            .encode(i, &test_pattern::render(width, height, i))
            .unwrap();
        let meta = FrameMeta {
            camera: camera.clone(),
            seq: i,
            capture_us: start_us + i * 1_000_000 / 15,
            pts_90k: fps.pts_90k(i),
            keyframe: au.keyframe,
            width,
            height,
            fps,
            codec: Codec::H264,
            epoch: 1,
        };
        let mut headers = OwnedHeaders::new();
        for (k, v) in wire::headers(&meta, None) {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
        let record = BaseRecord::to(&run.topic)
            .key(CAMERA)
            .payload(&au.annex_b)
            .headers(headers);
        producer.send(record).map_err(|(e, _)| e).expect("send");
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// Archive playback across an hour: a stream recorded from 3 s before a
/// whole hour to 3 s after it is archived in two hour directories (two
/// hourly index files), and the VOD playlist for that range is one
/// continuous run (no discontinuity) that ffprobe plays from the collector
/// with every frame, in order.
#[test]
fn archive_vod_plays_a_range_across_an_hour_boundary() {
    let run = Scenario::new("vod-hour", 1);
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A whole hour in the past, and 3 s (45 frames, three GOPs) either side.
    let hour_s = now_s - now_s % 3600 - 3600;
    let start_us = (hour_s - 3) * 1_000_000;
    produce_recorded(&run, 90, start_us);

    let root = run.dir.path().join("archive");
    let addr = free_local_addr();
    let base = format!("http://{addr}");
    let config = run.collector_config(root.to_str().unwrap()).replace(
        "[http]\nlisten = \"\"\n",
        &format!("[http]\nlisten = \"{addr}\"\n[live]\ndetections_topic = \"\"\n"),
    );
    let _collector = run.spawn("collector", "camfleet-collector", &config);
    let api = format!(
        "{base}/api/archive/{CAMERA}?from={}&to={}",
        hour_s - 10,
        hour_s + 10
    );
    let mut timeline = serde_json::Value::Null;
    wait_until(Duration::from_secs(60), "90 frames in the index", || {
        let r = curl(&api, &[]);
        timeline = serde_json::from_slice(&r.body).unwrap_or_default();
        r.status == 200 && timeline_frames(&timeline) == 90
    });

    // Two hours on disk, each with its own index.
    let hour_dirs: std::collections::BTreeSet<_> = segments_under(&root)
        .iter()
        .map(|p| p.parent().unwrap().to_path_buf())
        .collect();
    assert_eq!(hour_dirs.len(), 2, "{hour_dirs:?}");
    for dir in &hour_dirs {
        assert!(dir.join("segments.parquet").exists(), "{}", dir.display());
    }

    // The VOD playlist of the range: one run, no discontinuity.
    let vod_url = format!(
        "{base}/archive/{CAMERA}/index.m3u8?from={}&to={}",
        hour_s - 3,
        hour_s + 3
    );
    let vod = curl(&vod_url, &[]);
    assert_eq!(vod.status, 200, "{}", vod.text());
    let text = vod.text();
    assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
    assert!(!text.contains("#EXT-X-DISCONTINUITY"), "{text}");
    assert_eq!(
        text.matches("#EXT-X-PROGRAM-DATE-TIME").count(),
        1,
        "{text}"
    );

    // ffprobe plays it from the collector: every frame.
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&vod_url)
        .output()
        .expect("ffprobe");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some("90"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The pictures are the recorded ones, in order, across the hour.
    let mut numbers = Vec::new();
    for (i, uri) in segment_uris(&text).iter().enumerate() {
        let file = run.dir.path().join(format!("vod-{i}.ts"));
        let r = curl(&format!("{base}/archive/{CAMERA}/{uri}"), &[]);
        assert_eq!(r.status, 200);
        std::fs::write(&file, &r.body).unwrap();
        numbers.extend(frame_numbers(&file, 320, 192));
    }
    assert_eq!(numbers, (0..90).collect::<Vec<_>>());
}
