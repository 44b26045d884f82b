//! The learning test clip (issue 11), shared by the data side's and the
//! model side's end-to-end tests: a static scene with a person photo pasted
//! as a still "poster", another person (a crop of a different photo) walking
//! across, then a black (covered) section. Composed by ffmpeg from the
//! registry photos scripts/setup caches (`CAMFLEET_PHOTOS`), written as Y4M
//! for the agent's file source.

use std::path::Path;
use std::process::Command;

/// Where things are in [`build`]'s clip (boxes normalised to the picture).
pub struct LearningClip {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Frames of scene (poster + walker), then `black_frames` black ones,
    /// then `after_frames` of the scene again ([`build_covered`]).
    pub scene_frames: u32,
    pub black_frames: u32,
    pub after_frames: u32,
    /// The poster: the astronaut photo's person, never moving.
    pub poster: [f64; 4],
    /// The walker's left edge moves from `walker_x0` (normalised) at
    /// `walker_speed` picture widths per second; its box is `walker_w` wide,
    /// `walker_y` top to bottom.
    pub walker_x0: f64,
    pub walker_speed: f64,
    pub walker_w: f64,
    pub walker_y: [f64; 2],
}

impl LearningClip {
    /// The walker's box at frame `n` (of the scene section).
    pub fn walker_at(&self, n: u32) -> [f64; 4] {
        let x = self.walker_x0 + self.walker_speed * n as f64 / self.fps as f64;
        [x, self.walker_y[0], x + self.walker_w, self.walker_y[1]]
    }
}

/// Builds the clip at `out` (.y4m) from `photos` (astronaut.png, bus.jpg):
/// `scene_s` seconds of scene, then `black_s` seconds of black, 10 fps,
/// 640x360, with a little temporal noise so no picture is frozen.
pub fn build(photos: &Path, scene_s: u32, black_s: u32, out: &Path) -> LearningClip {
    build_covered(photos, scene_s, black_s, 0, out)
}

/// [`build`] with `after_s` more seconds of the scene (the walker going on)
/// after the black section: the camera uncovered again. `black_s = 0` is
/// the scene alone (normal operation, for training a scene model).
pub fn build_covered(
    photos: &Path,
    scene_s: u32,
    black_s: u32,
    after_s: u32,
    out: &Path,
) -> LearningClip {
    let (w, h, fps) = (640u32, 360u32, 10u32);
    // Poster: astronaut.png's person (18,14)-(362,512) scaled to 110x160 at (40,120).
    let (px, py, pw, ph) = (40, 120, 110, 160);
    // Walker: bus.jpg's left man (52,396)-(245,905) scaled to 80x210, from x=260 at 25 px/s.
    let (wx, wy, ww, wh, speed) = (260, 130, 80, 210, 25);
    let filter = format!(
        "[1:v]crop=344:498:18:14,scale={pw}:{ph},format=yuv420p[poster];\
         [2:v]crop=193:509:52:396,scale={ww}:{wh},format=yuv420p[walker];\
         [0:v][poster]overlay={px}:{py}[a];\
         [a][walker]overlay=x='{wx}+t*{speed}':y={wy}[b];\
         [b]noise=alls=4:allf=t,format=yuv420p,split[s1][s2];\
         [s1]trim=end={scene_s},setpts=PTS-STARTPTS[before];\
         [s2]trim=start={scene_s},setpts=PTS-STARTPTS[after];\
         [3:v]format=yuv420p,trim=end={black_s},setpts=PTS-STARTPTS[black];\
         {}",
        match (black_s, after_s) {
            (0, _) => "[before]null;[black]nullsink;[after]nullsink".to_string(),
            (_, 0) => "[before][black]concat=n=2:v=1:a=0;[after]nullsink".to_string(),
            _ => "[before][black][after]concat=n=3:v=1:a=0".to_string(),
        }
    );
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!(
            "color=c=0x5a6e4a:s={w}x{h}:r={fps}:d={}",
            scene_s + after_s.max(1)
        ))
        .arg("-i")
        .arg(photos.join("astronaut.png"))
        .arg("-i")
        .arg(photos.join("bus.jpg"))
        .args(["-f", "lavfi", "-i"])
        .arg(format!(
            "color=c=black:s={w}x{h}:r={fps}:d={}",
            black_s.max(1)
        ))
        .args(["-filter_complex", &filter, "-pix_fmt", "yuv420p"])
        .arg(out)
        .status()
        .expect("ffmpeg (scripts/setup installs it)");
    assert!(status.success(), "ffmpeg could not build the learning clip");
    let (wf, hf) = (w as f64, h as f64);
    LearningClip {
        width: w,
        height: h,
        fps,
        scene_frames: scene_s * fps,
        black_frames: black_s * fps,
        after_frames: if black_s == 0 { 0 } else { after_s * fps },
        poster: [
            px as f64 / wf,
            py as f64 / hf,
            (px + pw) as f64 / wf,
            (py + ph) as f64 / hf,
        ],
        walker_x0: wx as f64 / wf,
        walker_speed: speed as f64 / wf,
        walker_w: ww as f64 / wf,
        walker_y: [wy as f64 / hf, (wy + wh) as f64 / hf],
    }
}

/// An agent streaming the clip at `y4m` as camera `camera` to the
/// scenario's topic (paced, like a real camera: the stillness rule measures
/// capture time). Its state directory is shared by its runs.
pub fn agent_config(run: &crate::Scenario, camera: &str, y4m: &Path) -> String {
    format!(
        r#"data_dir = "{data}"
[kafka]
bootstrap_servers = "{kafka}"
topic = "{topic}"
[http]
listen = ""
[[camera]]
id = "{camera}"
source = {{ kind = "y4m", path = "{y4m}" }}
encoder = {{ bitrate_kbps = 1500, keyframe_interval_frames = 10 }}
"#,
        data = run.dir.path().join("agent-data").display(),
        kafka = run.services.kafka,
        topic = run.topic,
        y4m = y4m.display(),
    )
}
