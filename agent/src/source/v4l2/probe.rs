//! `camfleet-agent probe`: what each V4L2 node is and what it can capture.

use super::{DeviceCaps, FrameIntervals, FrameSizes, Interval, V4l2Error, V4l2Opener};
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Serialize)]
pub struct ProbeReport {
    pub devices: Vec<ProbedDevice>,
}

#[derive(Debug, Serialize)]
pub struct ProbedDevice {
    pub path: String,
    /// Why the node could not be opened or queried; the rest is then empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub caps: Option<DeviceCaps>,
    pub formats: Vec<ProbedFormat>,
}

#[derive(Debug, Serialize)]
pub struct ProbedFormat {
    pub fourcc: String,
    pub description: String,
    /// camfleet can capture it (YUYV, NV12, MJPEG).
    pub supported: bool,
    pub sizes: Vec<ProbedSize>,
    /// For devices that take any size in a range instead of a list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_range: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ProbedSize {
    pub width: u32,
    pub height: u32,
    /// Discrete rates, frames per second.
    pub fps: Vec<f64>,
    /// For a continuous rate range: "min-max".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fps_range: Option<String>,
}

fn fps(i: &Interval) -> f64 {
    (i.fps() * 1000.0).round() / 1000.0
}

/// Lists every node the opener finds. A node that cannot be opened or
/// queried is listed with its error: one broken node hides nothing else.
pub fn probe(opener: &dyn V4l2Opener) -> ProbeReport {
    let devices = opener
        .list()
        .into_iter()
        .map(|path| {
            let shown = path.display().to_string();
            let failed = |error: String| ProbedDevice {
                path: shown.clone(),
                error: Some(error),
                caps: None,
                formats: Vec::new(),
            };
            let device = match opener.open(&path) {
                Ok(d) => d,
                Err(e) => return failed(V4l2Error::from_open(e).to_string()),
            };
            let caps = match device.caps() {
                Ok(c) => c,
                Err(e) => return failed(format!("VIDIOC_QUERYCAP: {e}")),
            };
            let mut formats = Vec::new();
            // Metadata nodes (a UVC camera's second node) have no formats to list.
            if caps.video_capture {
                for desc in device.formats().unwrap_or_default() {
                    let mut format = ProbedFormat {
                        fourcc: desc.fourcc.to_string(),
                        description: desc.description,
                        supported: desc.fourcc.supported().is_some(),
                        sizes: Vec::new(),
                        size_range: None,
                    };
                    match device.sizes(desc.fourcc) {
                        Ok(FrameSizes::Discrete(list)) => {
                            for (width, height) in list {
                                let mut size = ProbedSize {
                                    width,
                                    height,
                                    fps: Vec::new(),
                                    fps_range: None,
                                };
                                match device.intervals(desc.fourcc, width, height) {
                                    Ok(FrameIntervals::Discrete(i)) => {
                                        size.fps = i.iter().map(fps).collect()
                                    }
                                    Ok(FrameIntervals::Stepwise { min, max }) => {
                                        size.fps_range =
                                            Some(format!("{}-{}", fps(&max), fps(&min)))
                                    }
                                    Err(_) => {}
                                }
                                format.sizes.push(size);
                            }
                        }
                        Ok(FrameSizes::Stepwise {
                            min_width,
                            max_width,
                            step_width,
                            min_height,
                            max_height,
                            step_height,
                        }) => {
                            format.size_range = Some(format!(
                                "{min_width}x{min_height} to {max_width}x{max_height}, steps {step_width}x{step_height}"
                            ))
                        }
                        Err(_) => {}
                    }
                    formats.push(format);
                }
            }
            ProbedDevice {
                path: shown,
                error: None,
                caps: Some(caps),
                formats,
            }
        })
        .collect();
    ProbeReport { devices }
}

impl ProbeReport {
    /// Human-readable listing, as `camfleet-agent probe` prints it.
    pub fn to_text(&self) -> String {
        if self.devices.is_empty() {
            return "no V4L2 capture devices found (looked for /dev/video*)\n".into();
        }
        let mut out = String::new();
        for d in &self.devices {
            if let Some(e) = &d.error {
                let _ = writeln!(out, "{}: {e}", d.path);
                continue;
            }
            let Some(c) = &d.caps else { continue };
            let _ = writeln!(
                out,
                "{}: {} (driver {}, bus {})",
                d.path, c.card, c.driver, c.bus
            );
            let _ = writeln!(out, "  capabilities: {}", c.capabilities.join(" "));
            if !c.video_capture {
                let _ = writeln!(out, "  not a video capture node");
                continue;
            }
            for f in &d.formats {
                let _ = writeln!(
                    out,
                    "  {} ({}){}",
                    f.fourcc,
                    f.description,
                    if f.supported {
                        ""
                    } else {
                        " [not supported by camfleet]"
                    }
                );
                if let Some(r) = &f.size_range {
                    let _ = writeln!(out, "    any size {r}");
                }
                for s in &f.sizes {
                    let rates = match &s.fps_range {
                        Some(r) => r.clone(),
                        None => s
                            .fps
                            .iter()
                            .map(|f| f.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                    };
                    let _ = writeln!(out, "    {}x{} @ {rates} fps", s.width, s.height);
                }
            }
        }
        out
    }
}
