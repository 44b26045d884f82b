//! Synthetic but meaningful training data for tests and `scripts/bench
//! learn`: the situation the verifier exists for. A camera sees a still,
//! person-like object (a poster: same box, same look, every frame, labelled
//! false by the stillness rule) while real people pass by (moving boxes,
//! varied looks, labelled true by ops). Deterministic for a seed.

use super::features::{detection_id, DetectionFeatures, LabelSource, LabelledDetection};

/// A small deterministic generator (64-bit LCG); quality is irrelevant here.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Self {
        Self(
            seed.wrapping_mul(2862933555777941757)
                .wrapping_add(3037000493),
        )
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of uniforms), mean 0, sd 1.
    pub fn normal(&mut self) -> f32 {
        (0..12).map(|_| self.uniform()).sum::<f32>() - 6.0
    }
}

/// `n` labelled detections of `camera`, every other one the poster.
/// Embeddings have `embedding_dim` values; the poster's are one fixed look
/// plus noise, people's vary around a shared person look.
pub fn poster_and_people(
    camera: &str,
    n: usize,
    embedding_dim: usize,
    seed: u64,
) -> Vec<LabelledDetection> {
    let mut rng = Lcg::new(seed);
    // Crops of people share a "person" look and vary around it; the poster
    // is one print, seen the same way every time.
    let poster_look: Vec<f32> = (0..embedding_dim).map(|_| rng.normal()).collect();
    // Person and poster looks differ by 1.5 per dimension (either sign), well
    // beyond people's own spread (0.8): a backbone tells a print from a body.
    let person_look: Vec<f32> = poster_look
        .iter()
        .map(|v| v + if rng.uniform() < 0.5 { 1.5 } else { -1.5 })
        .collect();
    let start_us = 1_764_000_000_000_000i64;
    (0..n)
        .map(|i| {
            let seq = i as u64 / 2;
            let capture_us = start_us + seq as i64 * 500_000;
            let poster = i % 2 == 0;
            let (x, y, w, h, score, embedding) = if poster {
                (
                    0.60 + 0.003 * rng.normal(),
                    0.20 + 0.003 * rng.normal(),
                    0.10,
                    0.30,
                    0.70 + 0.03 * rng.normal(),
                    poster_look
                        .iter()
                        .map(|v| v + 0.1 * rng.normal())
                        .collect::<Vec<f32>>(),
                )
            } else {
                (
                    0.8 * rng.uniform(),
                    0.1 + 0.5 * rng.uniform(),
                    0.05 + 0.1 * rng.uniform(),
                    0.2 + 0.2 * rng.uniform(),
                    (0.45 + 0.5 * rng.uniform()).min(0.99),
                    person_look
                        .iter()
                        .map(|v| v + 0.8 * rng.normal())
                        .collect::<Vec<f32>>(),
                )
            };
            LabelledDetection {
                features: DetectionFeatures {
                    detection_id: detection_id(camera, 1, seq, usize::from(!poster)),
                    camera: camera.into(),
                    capture_us,
                    class_id: 0,
                    score,
                    x_min: x,
                    y_min: y,
                    x_max: x + w,
                    y_max: y + h,
                    embedding,
                },
                real: !poster,
                source: if poster {
                    LabelSource::Stillness
                } else {
                    LabelSource::Ops
                },
            }
        })
        .collect()
}

/// `n` whole-frame embeddings of one normal scene (small variations
/// around a fixed look), at 1 s intervals.
pub fn normal_scene(n: usize, embedding_dim: usize, seed: u64) -> Vec<(i64, Vec<f32>)> {
    let mut rng = Lcg::new(seed);
    let look: Vec<f32> = (0..embedding_dim).map(|_| rng.normal()).collect();
    (0..n)
        .map(|i| {
            (
                1_764_000_000_000_000 + i as i64 * 1_000_000,
                look.iter().map(|v| v + 0.2 * rng.normal()).collect(),
            )
        })
        .collect()
}
