//! Choosing pixel format, size and frame rate from what a device offers.
//!
//! Rules (docs/v4l2.md):
//! 1. Formats considered: the configured one, else YUYV, NV12, MJPEG in that
//!    order (raw first: no decode cost, no compression artefacts).
//! 2. For each, the nearest even size (least |dw| + |dh|), then the nearest
//!    rate at that size.
//! 3. The winner is the least (size distance, rate distance, format order):
//!    raw wins when it has the size and rate, MJPEG when only it has them.
//! 4. `exact`: anything but the requested size and rate is an error listing
//!    what the device offers; otherwise the choice is logged as a note.
//! 5. The driver's answer to S_FMT / S_PARM is checked the same way.

use super::{
    ActualFormat, FourCc, FrameIntervals, FrameSizes, Interval, Request, V4l2Device, V4l2Error,
};
use std::path::Path;

/// What to ask the driver for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub fourcc: FourCc,
    pub width: u32,
    pub height: u32,
    pub interval: Interval,
    /// Why the plan differs from the request, for the log.
    pub notes: Vec<String>,
}

const PREFERENCE: [FourCc; 3] = [FourCc::YUYV, FourCc::NV12, FourCc::MJPG];

fn ioctl(op: &'static str) -> impl Fn(std::io::Error) -> V4l2Error {
    move |error| V4l2Error::Ioctl { op, error }
}

pub fn choose(device: &dyn V4l2Device, request: &Request) -> Result<Plan, V4l2Error> {
    let offered: Vec<FourCc> = device
        .formats()
        .map_err(ioctl("VIDIOC_ENUM_FMT"))?
        .into_iter()
        .map(|f| f.fourcc)
        .collect();
    let list = |v: &[FourCc]| {
        v.iter()
            .map(|f| f.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let candidates: Vec<FourCc> = match request.pixel_format {
        Some(p) => {
            let want = FourCc::of(p);
            if !offered.contains(&want) {
                return Err(V4l2Error::Unsupported(format!(
                    "does not offer pixel format {}; it offers: {}",
                    p.as_str(),
                    list(&offered)
                )));
            }
            vec![want]
        }
        None => PREFERENCE
            .into_iter()
            .filter(|f| offered.contains(f))
            .collect(),
    };
    if candidates.is_empty() {
        return Err(V4l2Error::Unsupported(format!(
            "offers none of YUYV, NV12, MJPEG; it offers: {}",
            list(&offered)
        )));
    }

    // (size distance, rate distance, format order) -> plan
    let mut best: Option<((u64, u64, usize), Plan)> = None;
    for (rank, &fourcc) in candidates.iter().enumerate() {
        let sizes = device
            .sizes(fourcc)
            .map_err(ioctl("VIDIOC_ENUM_FRAMESIZES"))?;
        let Some((width, height, size_distance)) =
            nearest_size(&sizes, request.width, request.height)
        else {
            continue;
        };
        let intervals = device
            .intervals(fourcc, width, height)
            .map_err(ioctl("VIDIOC_ENUM_FRAMEINTERVALS"))?;
        let Some((interval, rate_distance)) = nearest_interval(&intervals, request.fps) else {
            continue;
        };
        let key = (size_distance, rate_distance, rank);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            let plan = Plan {
                fourcc,
                width,
                height,
                interval,
                notes: Vec::new(),
            };
            best = Some((key, plan));
        }
    }
    let wanted = format!(
        "{}x{} @ {} fps in {}",
        request.width,
        request.height,
        request.fps,
        list(&candidates)
    );
    let Some(((size_distance, rate_distance, _), mut plan)) = best else {
        return Err(V4l2Error::Unsupported(format!(
            "does not support {wanted}; it offers: {}",
            offers(device, &candidates)
        )));
    };
    if size_distance > 0 || rate_distance > 0 {
        if request.exact {
            return Err(V4l2Error::Unsupported(format!(
                "does not support {wanted} (exact = true); it offers: {}",
                offers(device, &candidates)
            )));
        }
        plan.notes.push(format!(
            "asked for {}x{} @ {} fps; using the nearest the device offers: {}x{} {} @ {} fps",
            request.width,
            request.height,
            request.fps,
            plan.width,
            plan.height,
            plan.fourcc,
            plan.interval
        ));
    }
    Ok(plan)
}

/// Checks the driver's answer to S_FMT / S_PARM against the plan.
pub fn accept(
    plan: &Plan,
    actual: &ActualFormat,
    interval: Interval,
    request: &Request,
    path: &Path,
) -> Result<(), V4l2Error> {
    if actual.fourcc.supported().is_none() {
        return Err(V4l2Error::Unsupported(format!(
            "driver set pixel format {} when asked for {}",
            actual.fourcc, plan.fourcc
        )));
    }
    if !usable(actual.width) || !usable(actual.height) {
        return Err(V4l2Error::Unsupported(format!(
            "driver set {}x{}: I420 needs even sizes",
            actual.width, actual.height
        )));
    }
    let same = actual.fourcc == plan.fourcc
        && actual.width == plan.width
        && actual.height == plan.height
        && interval.same_rate(&plan.interval);
    if !same {
        let what = format!(
            "asked the driver for {}x{} {} @ {} fps, it set {}x{} {} @ {} fps",
            plan.width,
            plan.height,
            plan.fourcc,
            plan.interval,
            actual.width,
            actual.height,
            actual.fourcc,
            interval
        );
        if request.exact {
            return Err(V4l2Error::Unsupported(format!("{what} (exact = true)")));
        }
        tracing::info!(device = %path.display(), "{what}");
    }
    Ok(())
}

/// I420 needs even, non-zero sizes.
fn usable(v: u32) -> bool {
    v > 0 && v & 1 == 0
}

/// Nearest even size and its distance from the request (0 = exact).
pub fn nearest_size(sizes: &FrameSizes, width: u32, height: u32) -> Option<(u32, u32, u64)> {
    let distance = |w: u32, h: u32| w.abs_diff(width) as u64 + h.abs_diff(height) as u64;
    match sizes {
        FrameSizes::Discrete(list) => list
            .iter()
            .filter(|(w, h)| usable(*w) && usable(*h))
            .map(|&(w, h)| (w, h, distance(w, h)))
            .min_by_key(|&(w, h, d)| (d, std::cmp::Reverse(w * h))),
        FrameSizes::Stepwise {
            min_width,
            max_width,
            step_width,
            min_height,
            max_height,
            step_height,
        } => {
            let w = on_grid(width, *min_width, *max_width, *step_width)?;
            let h = on_grid(height, *min_height, *max_height, *step_height)?;
            Some((w, h, distance(w, h)))
        }
    }
}

/// The even value on `min + k * step` (within `max`) nearest `want`.
fn on_grid(want: u32, min: u32, max: u32, step: u32) -> Option<u32> {
    let step = step.max(1);
    if min > max {
        return None;
    }
    let clamped = want.clamp(min, max);
    let k = ((clamped - min) as f64 / step as f64).round() as u32;
    let mut candidates: Vec<u32> = [k.saturating_sub(1), k, k + 1]
        .into_iter()
        .map(|k| min + k * step)
        .filter(|v| *v <= max && usable(*v))
        .collect();
    // An odd step from an odd minimum: look a little wider for an even value.
    if candidates.is_empty() {
        candidates = (0..=(max - min) / step)
            .map(|k| min + k * step)
            .filter(|v| usable(*v))
            .collect();
    }
    candidates.into_iter().min_by_key(|v| v.abs_diff(want))
}

/// Nearest frame interval to `fps` and its distance in milli-fps (0 = exact).
pub fn nearest_interval(intervals: &FrameIntervals, fps: u32) -> Option<(Interval, u64)> {
    let want = Interval::per_second(fps);
    let distance = |i: &Interval| {
        if i.same_rate(&want) {
            0
        } else {
            ((i.fps() - fps as f64).abs() * 1000.0).ceil().max(1.0) as u64
        }
    };
    match intervals {
        FrameIntervals::Discrete(list) => list
            .iter()
            .filter(|i| i.num > 0 && i.den > 0)
            .map(|i| (*i, distance(i)))
            // Ties go to the faster rate: dropping frames is cheaper than missing them.
            .min_by(|a, b| a.1.cmp(&b.1).then(b.0.fps().total_cmp(&a.0.fps()))),
        FrameIntervals::Stepwise { min, max } => {
            // `min` is the shortest interval, the fastest rate.
            let (fastest, slowest) = (min.fps(), max.fps());
            let chosen = if (fps as f64) > fastest {
                *min
            } else if (fps as f64) < slowest {
                *max
            } else {
                want
            };
            (chosen.num > 0 && chosen.den > 0).then(|| (chosen, distance(&chosen)))
        }
    }
}

/// "YUYV 640x480 (30, 15 fps), 1280x720 (10 fps); MJPG ..." for error messages.
pub fn offers(device: &dyn V4l2Device, formats: &[FourCc]) -> String {
    let mut parts = Vec::new();
    for &fourcc in formats {
        let sizes = match device.sizes(fourcc) {
            Ok(FrameSizes::Discrete(list)) => list
                .iter()
                .map(|&(w, h)| {
                    let rates = match device.intervals(fourcc, w, h) {
                        Ok(FrameIntervals::Discrete(i)) => i
                            .iter()
                            .map(|i| i.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        Ok(FrameIntervals::Stepwise { min, max }) => format!("{max}-{min}"),
                        Err(_) => "?".into(),
                    };
                    format!("{w}x{h} ({rates} fps)")
                })
                .collect::<Vec<_>>()
                .join(", "),
            Ok(FrameSizes::Stepwise {
                min_width,
                max_width,
                min_height,
                max_height,
                ..
            }) => format!("{min_width}x{min_height} to {max_width}x{max_height}"),
            Err(e) => format!("(cannot list sizes: {e})"),
        };
        parts.push(format!("{fourcc} {sizes}"));
    }
    parts.join("; ")
}
