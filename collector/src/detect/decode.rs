//! Output decoders (one image's slice of each output tensor -> candidate
//! boxes in model-input pixels) and class-wise NMS.
//!
//! Sans-I/O and free of ONNX Runtime types, so the unit tests feed them
//! hand-made tensors.

/// A box in model-input pixels, before it is mapped to the original frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub class_id: usize,
    pub score: f32,
    /// x_min, y_min, x_max, y_max
    pub bbox: [f32; 4],
}

/// Parameters of the NanoDet/GFL decoder for one image.
pub struct GflParams<'a> {
    pub input_w: u32,
    pub input_h: u32,
    pub strides: &'a [u32],
    pub reg_max: u32,
    pub center_offset: f32,
    pub scores_are_logits: bool,
    pub num_classes: usize,
    pub threshold: f32,
}

/// NanoDet/GFL: for each stride, `scores[i]` is [cells, classes] and
/// `boxes[i]` is [cells, 4 * (reg_max + 1)] (one image). A cell's box is the
/// expectation of the softmax over each side's bins, times the stride, off
/// the cell centre. Only the best class of a cell is kept (as NanoDet does).
pub fn gfl(p: &GflParams, scores: &[&[f32]], boxes: &[&[f32]], out: &mut Vec<Candidate>) {
    let bins = (p.reg_max + 1) as usize;
    // Compare logits against the threshold's logit: no sigmoid per score.
    let threshold = if p.scores_are_logits {
        let t = p.threshold.clamp(1e-6, 1.0 - 1e-6);
        (t / (1.0 - t)).ln()
    } else {
        p.threshold
    };
    let mut probs = vec![0f32; bins];
    for ((&stride, &sc), &bx) in p.strides.iter().zip(scores).zip(boxes) {
        let cols = (p.input_w / stride) as usize;
        let cells = cols * (p.input_h / stride) as usize;
        debug_assert_eq!(sc.len(), cells * p.num_classes);
        debug_assert_eq!(bx.len(), cells * 4 * bins);
        for cell in 0..cells {
            let row = &sc[cell * p.num_classes..(cell + 1) * p.num_classes];
            let (class_id, &best) = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .expect("num_classes > 0");
            if best <= threshold {
                continue;
            }
            let score = if p.scores_are_logits {
                1.0 / (1.0 + (-best).exp())
            } else {
                best
            };
            let cx = ((cell % cols) as f32 + p.center_offset) * stride as f32;
            let cy = ((cell / cols) as f32 + p.center_offset) * stride as f32;
            let mut dist = [0f32; 4];
            for (side, d) in dist.iter_mut().enumerate() {
                let logits = &bx[(cell * 4 + side) * bins..(cell * 4 + side + 1) * bins];
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for (p, &l) in probs.iter_mut().zip(logits) {
                    *p = (l - max).exp();
                    sum += *p;
                }
                let expect: f32 = probs.iter().enumerate().map(|(i, p)| i as f32 * p).sum();
                *d = expect / sum * stride as f32;
            }
            out.push(Candidate {
                class_id,
                score,
                bbox: [cx - dist[0], cy - dist[1], cx + dist[2], cy + dist[3]],
            });
        }
    }
}

/// TF object detection API outputs for one image: `boxes` [M, 4] as
/// (ymin, xmin, ymax, xmax) in [0, 1] of the input, `scores` [M],
/// `classes` [M] (float ids), `count` the number of valid rows (or all).
#[allow(clippy::too_many_arguments)]
pub fn ssd(
    input_w: u32,
    input_h: u32,
    boxes: &[f32],
    scores: &[f32],
    classes: &[f32],
    count: Option<usize>,
    class_offset: i64,
    num_classes: usize,
    threshold: f32,
    out: &mut Vec<Candidate>,
) {
    let rows = scores.len().min(classes.len()).min(boxes.len() / 4);
    let rows = count.map_or(rows, |c| c.min(rows));
    let (w, h) = (input_w as f32, input_h as f32);
    for i in 0..rows {
        let score = scores[i];
        if score <= threshold {
            continue;
        }
        let id = classes[i].round() as i64 - class_offset;
        if id < 0 || id as usize >= num_classes {
            continue;
        }
        let b = &boxes[i * 4..i * 4 + 4];
        out.push(Candidate {
            class_id: id as usize,
            score,
            bbox: [b[1] * w, b[0] * h, b[3] * w, b[2] * h],
        });
    }
}

/// YOLOv8 output for one image: [4 + classes, N], rows cx, cy, w, h (input
/// pixels) then the class scores; column n is one anchor.
pub fn yolov8(output: &[f32], num_classes: usize, threshold: f32, out: &mut Vec<Candidate>) {
    let n = output.len() / (4 + num_classes);
    debug_assert_eq!(output.len(), n * (4 + num_classes));
    let at = |row: usize, col: usize| output[row * n + col];
    for col in 0..n {
        let (mut class_id, mut score) = (0, f32::NEG_INFINITY);
        for c in 0..num_classes {
            let s = at(4 + c, col);
            if s > score {
                (class_id, score) = (c, s);
            }
        }
        if score <= threshold {
            continue;
        }
        let (cx, cy, w, h) = (at(0, col), at(1, col), at(2, col), at(3, col));
        out.push(Candidate {
            class_id,
            score,
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
        });
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Class-wise greedy NMS: keeps, best score first, each box that overlaps no
/// kept box of its class by more than `iou_threshold`; at most `max` boxes.
pub fn nms(candidates: &mut Vec<Candidate>, iou_threshold: f32, max: usize) {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::with_capacity(max.min(candidates.len()));
    for c in candidates.iter() {
        if kept.len() == max {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != c.class_id || iou(&k.bbox, &c.bbox) <= iou_threshold)
        {
            kept.push(*c);
        }
    }
    *candidates = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f32; 4], b: [f32; 4]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-3)
    }

    #[test]
    fn gfl_decodes_bins_around_the_cell_centre() {
        // A 16x16 input, stride 8 -> a 2x2 grid; 3 classes; reg_max 2 (3 bins).
        let p = GflParams {
            input_w: 16,
            input_h: 16,
            strides: &[8],
            reg_max: 2,
            center_offset: 0.5,
            scores_are_logits: false,
            num_classes: 3,
            threshold: 0.5,
        };
        let mut scores = vec![0.1f32; 4 * 3];
        scores[3 * 3 + 2] = 0.9; // cell 3 (row 1, col 1), class 2
        scores[3] = 0.4; // cell 1: below the threshold
        let mut boxes = vec![0f32; 4 * 4 * 3];
        // Cell 3: left all mass on bin 1, top on bin 0, right on bin 2,
        // bottom split evenly between bins 1 and 2 (expectation 1.5).
        let big = 50.0;
        let cell = 3 * 12;
        boxes[cell + 1] = big; // left: bin 1
        boxes[cell + 3] = big; // top: bin 0
        boxes[cell + 6 + 2] = big; // right: bin 2
        boxes[cell + 9 + 1] = big; // bottom: bins 1 and 2
        boxes[cell + 9 + 2] = big;
        let mut out = Vec::new();
        gfl(&p, &[&scores], &[&boxes], &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let c = out[0];
        assert_eq!(c.class_id, 2);
        assert!((c.score - 0.9).abs() < 1e-6);
        // Centre (12, 12); distances 8, 0, 16, 12.
        assert!(close(c.bbox, [4.0, 12.0, 28.0, 24.0]), "{:?}", c.bbox);
    }

    #[test]
    fn gfl_with_logits_and_two_strides() {
        // 16x16 input, strides 8 (4 cells) and 16 (1 cell); 1 class; reg_max 1.
        let p = GflParams {
            input_w: 16,
            input_h: 16,
            strides: &[8, 16],
            reg_max: 1,
            center_offset: 0.0,
            scores_are_logits: true,
            num_classes: 1,
            threshold: 0.5,
        };
        let s8 = vec![-3.0f32; 4];
        let s16 = vec![2.0f32]; // sigmoid 0.881
        let b8 = vec![0f32; 4 * 4 * 2];
        let b16 = vec![0f32; 4 * 2]; // uniform bins: expectation 0.5 -> 8 px
        let mut out = Vec::new();
        gfl(&p, &[&s8, &s16], &[&b8, &b16], &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!((out[0].score - 0.8808).abs() < 1e-3);
        // Centre (0, 0) with offset 0; 8 px each side.
        assert!(
            close(out[0].bbox, [-8.0, -8.0, 8.0, 8.0]),
            "{:?}",
            out[0].bbox
        );
    }

    #[test]
    fn ssd_reads_normalised_yx_boxes_and_one_based_classes() {
        let boxes = [
            0.1, 0.2, 0.5, 0.6, // ymin xmin ymax xmax
            0.0, 0.0, 1.0, 1.0, //
            0.3, 0.3, 0.4, 0.4,
        ];
        let scores = [0.9, 0.8, 0.2];
        let classes = [1.0, 3.0, 1.0]; // 1 -> label 0; 3 -> label 2
        let mut out = Vec::new();
        ssd(
            300,
            200,
            &boxes,
            &scores,
            &classes,
            Some(3),
            1,
            3,
            0.5,
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].class_id, 0);
        assert!(
            close(out[0].bbox, [60.0, 20.0, 180.0, 100.0]),
            "{:?}",
            out[0].bbox
        );
        assert_eq!(out[1].class_id, 2);
        // count limits the rows read; an id past the labels is dropped.
        out.clear();
        ssd(
            300,
            200,
            &boxes,
            &scores,
            &classes,
            Some(1),
            1,
            3,
            0.5,
            &mut out,
        );
        assert_eq!(out.len(), 1);
        out.clear();
        ssd(
            300,
            200,
            &boxes,
            &scores,
            &[9.0, 0.0, 1.0],
            None,
            1,
            3,
            0.5,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn yolov8_reads_columns_of_centre_size_and_class_scores() {
        // 2 classes, 3 anchors: rows cx, cy, w, h, score0, score1.
        #[rustfmt::skip]
        let output = [
            100.0, 50.0, 10.0,
            80.0, 40.0, 10.0,
            20.0, 10.0, 4.0,
            40.0, 30.0, 4.0,
            0.1, 0.7, 0.3,
            0.8, 0.2, 0.1,
        ];
        let mut out = Vec::new();
        yolov8(&output, 2, 0.5, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].class_id, 1);
        assert!(
            close(out[0].bbox, [90.0, 60.0, 110.0, 100.0]),
            "{:?}",
            out[0].bbox
        );
        assert_eq!(out[1].class_id, 0);
        assert!((out[1].score - 0.7).abs() < 1e-6);
        assert!(
            close(out[1].bbox, [45.0, 25.0, 55.0, 55.0]),
            "{:?}",
            out[1].bbox
        );
    }

    #[test]
    fn nms_is_per_class_and_capped() {
        let c = |class_id, score, x: f32| Candidate {
            class_id,
            score,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        let mut v = vec![
            c(0, 0.6, 1.0),  // overlaps the 0.9 box of class 0: dropped
            c(0, 0.9, 0.0),  // kept
            c(1, 0.8, 0.0),  // same place, other class: kept
            c(0, 0.5, 20.0), // elsewhere: kept
        ];
        nms(&mut v, 0.5, 10);
        let got: Vec<_> = v.iter().map(|c| (c.class_id, c.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (1, 0.8), (0, 0.5)]);
        nms(&mut v, 0.5, 2);
        assert_eq!(v.len(), 2);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }
}
