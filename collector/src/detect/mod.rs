//! Object detection on decoded I420 frames with ONNX Runtime.
//!
//! A model is an .onnx file plus a TOML manifest ([`manifest`]): how to feed
//! it (input name, layout, size, colour order, normalisation, resize) and how
//! to read it (a [`manifest::DecoderSpec`]: NanoDet/GFL, SSD/TF detection API,
//! YOLOv8). [`Detector::load`] checks the model's declared input and outputs
//! against the manifest, so a wrong or unreadable model fails at start with
//! the file and the cause. [`Detector::detect_i420`] takes a batch of frames
//! (one per camera, any sizes), preprocesses each once straight into the
//! input tensor ([`preprocess`]), runs the model in batches when its batch
//! dimension is dynamic, decodes, applies class-wise NMS and returns boxes in
//! [0, 1] of each original frame.
//!
//! ONNX Runtime is the shared library from the PyPI wheel, loaded at run time
//! (ort's `load-dynamic`): from [`DetectorOptions::ort_dylib`] or the
//! `ORT_DYLIB_PATH` environment variable (`.services/env` sets it).
//! docs/detection.md has the model, the manifest format and the numbers.

pub mod decode;
pub mod manifest;
pub mod preprocess;

use decode::Candidate;
use manifest::{DecoderSpec, Layout, Manifest};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionOutputs};
use ort::value::{TensorElementType, TensorRef, ValueType};
use preprocess::{Placement, Preprocessor};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// One detected object.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub label: String,
    pub class_id: usize,
    pub score: f32,
    /// x_min, y_min, x_max, y_max in [0, 1] of the original frame.
    pub bbox: [f32; 4],
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("model manifest {path}: {source}")]
    Manifest {
        path: PathBuf,
        source: manifest::ManifestError,
    },
    #[error(
        "model file {path} does not exist (scripts/setup converts the default model into \
         $CAMFLEET_CACHE/models)"
    )]
    ModelMissing { path: PathBuf },
    #[error("model file {path} cannot be loaded by ONNX Runtime: {message}")]
    ModelUnreadable { path: PathBuf, message: String },
    #[error("model file {path} does not match its manifest {manifest}: {message}")]
    Mismatch {
        path: PathBuf,
        manifest: PathBuf,
        message: String,
    },
    #[error(
        "no ONNX Runtime library: set ORT_DYLIB_PATH (scripts/services writes it to \
         .services/env) or pass its path"
    )]
    NoRuntime,
    #[error("ONNX Runtime library {path}: {message}")]
    Runtime { path: PathBuf, message: String },
    #[error("frame {index}: {source}")]
    Frame {
        index: usize,
        source: preprocess::PreprocessError,
    },
    #[error("inference with {model} failed: {message}")]
    Inference { model: String, message: String },
}

/// Settings that are the deployment's, not the model's.
#[derive(Debug, Clone)]
pub struct DetectorOptions {
    /// libonnxruntime.so; `None`: the `ORT_DYLIB_PATH` environment variable.
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime threads per inference call. 1 is the best throughput on a
    /// 2-core box with batching (docs/detection.md); more lowers one frame's
    /// latency on an idle machine.
    pub intra_threads: usize,
    /// Frames per model call when the model's batch dimension is dynamic.
    pub max_batch: usize,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            ort_dylib: None,
            intra_threads: 1,
            max_batch: 4,
        }
    }
}

/// The process-wide ONNX Runtime environment (ort allows one per process),
/// made on first use from the first library path given.
pub(crate) fn environment(
    dylib: Option<&Path>,
) -> Result<ort::environment::Environment, DetectError> {
    static ENV: OnceLock<ort::environment::Environment> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let _guard = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(env) = ENV.get() {
        return Ok(env.clone());
    }
    let path = match dylib {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .ok_or(DetectError::NoRuntime)?,
    };
    let runtime_err = |message: String| DetectError::Runtime {
        path: path.clone(),
        message,
    };
    if !path.is_file() {
        return Err(runtime_err("no such file".into()));
    }
    let env = ort::init_from(&path)
        .map_err(|e| runtime_err(e.to_string()))?
        .with_name("camfleet")
        .with_telemetry(false)
        .build()
        .map_err(|e| runtime_err(e.to_string()))?;
    Ok(ENV.get_or_init(|| env).clone())
}

/// A loaded, checked model, ready for frames. Not `Sync`: give each
/// inference thread its own (sessions share the process's runtime).
pub struct Detector {
    manifest: Manifest,
    model_path: PathBuf,
    session: Session,
    preprocessor: Preprocessor,
    /// Frames per call: 1 unless the model's batch dimension is dynamic.
    batch: usize,
    /// Input tensor values of `batch` images, reused between calls.
    input: Vec<f32>,
    placements: Vec<Placement>,
    candidates: Vec<Candidate>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("model", &self.model_path)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Detector {
    /// Loads the manifest, then its model from `models_dir` (or `model`, when
    /// that is an .onnx file), and checks the one against the other.
    pub fn load(
        manifest_path: &Path,
        model: &Path,
        options: &DetectorOptions,
    ) -> Result<Detector, DetectError> {
        let manifest =
            Manifest::from_file(manifest_path).map_err(|source| DetectError::Manifest {
                path: manifest_path.to_path_buf(),
                source,
            })?;
        let model_path = if model.is_dir() {
            manifest.model_path(model)
        } else {
            model.to_path_buf()
        };
        if !model_path.is_file() {
            return Err(DetectError::ModelMissing { path: model_path });
        }
        let env = environment(options.ort_dylib.as_deref())?;
        let unreadable = |message: String| DetectError::ModelUnreadable {
            path: model_path.clone(),
            message,
        };
        let session = Session::builder(&env)
            .map_err(|e| unreadable(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| unreadable(e.to_string()))?
            .with_intra_threads(options.intra_threads.max(1))
            .map_err(|e| unreadable(e.to_string()))?
            .commit_from_file(&model_path)
            .map_err(|e| unreadable(e.to_string()))?;
        let dynamic_batch =
            check_model(&manifest, &session).map_err(|message| DetectError::Mismatch {
                path: model_path.clone(),
                manifest: manifest_path.to_path_buf(),
                message,
            })?;
        let batch = if dynamic_batch {
            options.max_batch.max(1)
        } else {
            1
        };
        let preprocessor = Preprocessor::new(&manifest.input);
        let input = vec![0f32; batch * preprocessor.image_len()];
        Ok(Detector {
            manifest,
            model_path,
            session,
            preprocessor,
            batch,
            input,
            placements: Vec::new(),
            candidates: Vec::new(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Frames per model call (1 when the model's batch size is fixed).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Detects objects in each frame: `(width, height, I420 bytes)`, any
    /// sizes. The result has one list per frame, best score first.
    pub fn detect_i420(
        &mut self,
        frames: &[(u32, u32, &[u8])],
    ) -> Result<Vec<Vec<Detection>>, DetectError> {
        let mut results = Vec::with_capacity(frames.len());
        for (chunk_index, chunk) in frames.chunks(self.batch).enumerate() {
            let first = chunk_index * self.batch;
            self.run_batch(first, chunk, &mut results)?;
        }
        Ok(results)
    }

    fn run_batch(
        &mut self,
        first: usize,
        frames: &[(u32, u32, &[u8])],
        results: &mut Vec<Vec<Detection>>,
    ) -> Result<(), DetectError> {
        let n = frames.len();
        let image_len = self.preprocessor.image_len();
        self.placements.clear();
        for (i, &(w, h, data)) in frames.iter().enumerate() {
            let out = &mut self.input[i * image_len..(i + 1) * image_len];
            let placement =
                self.preprocessor
                    .run(w, h, data, out)
                    .map_err(|source| DetectError::Frame {
                        index: first + i,
                        source,
                    })?;
            self.placements.push(placement);
        }
        let spec = &self.manifest.input;
        let (ih, iw) = (spec.height as usize, spec.width as usize);
        let shape = match spec.layout {
            Layout::Nchw => [n, 3, ih, iw],
            Layout::Nhwc => [n, ih, iw, 3],
        };
        let model = self.manifest.name.clone();
        let fail = |message: String| DetectError::Inference {
            model: model.clone(),
            message,
        };
        let tensor = TensorRef::from_array_view((shape, &self.input[..n * image_len]))
            .map_err(|e| fail(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![spec.name.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        for (i, placement) in self.placements.iter().enumerate() {
            self.candidates.clear();
            decode_image(&self.manifest, &outputs, i, n, &mut self.candidates).map_err(&fail)?;
            decode::nms(
                &mut self.candidates,
                self.manifest.nms_iou,
                self.manifest.max_detections,
            );
            results.push(
                self.candidates
                    .iter()
                    .map(|c| Detection {
                        label: self.manifest.labels[c.class_id].clone(),
                        class_id: c.class_id,
                        score: c.score,
                        bbox: placement.to_frame(c.bbox),
                    })
                    .collect(),
            );
        }
        Ok(())
    }
}

/// Image `index`'s slice of a named f32 output of a batch of `n`.
fn image_slice<'o>(
    outputs: &'o SessionOutputs,
    name: &str,
    index: usize,
    n: usize,
) -> Result<&'o [f32], String> {
    let value = outputs
        .get(name)
        .ok_or_else(|| format!("no output {name:?}"))?;
    let (_, data) = value
        .try_extract_tensor::<f32>()
        .map_err(|e| format!("output {name:?}: {e}"))?;
    let per = data.len() / n;
    Ok(&data[index * per..(index + 1) * per])
}

fn decode_image(
    m: &Manifest,
    outputs: &SessionOutputs,
    index: usize,
    n: usize,
    out: &mut Vec<Candidate>,
) -> Result<(), String> {
    let (iw, ih) = (m.input.width, m.input.height);
    match &m.decoder {
        DecoderSpec::Gfl {
            strides,
            reg_max,
            scores,
            boxes,
            center_offset,
            scores_are_logits,
        } => {
            let s = scores
                .iter()
                .map(|name| image_slice(outputs, name, index, n))
                .collect::<Result<Vec<_>, _>>()?;
            let b = boxes
                .iter()
                .map(|name| image_slice(outputs, name, index, n))
                .collect::<Result<Vec<_>, _>>()?;
            let params = decode::GflParams {
                input_w: iw,
                input_h: ih,
                strides,
                reg_max: *reg_max,
                center_offset: *center_offset,
                scores_are_logits: *scores_are_logits,
                num_classes: m.labels.len(),
                threshold: m.score_threshold,
            };
            decode::gfl(&params, &s, &b, out);
        }
        DecoderSpec::Ssd {
            boxes,
            scores,
            classes,
            count,
            class_offset,
        } => {
            let count = match count {
                Some(name) => Some(image_slice(outputs, name, index, n)?[0].max(0.0) as usize),
                None => None,
            };
            decode::ssd(
                iw,
                ih,
                image_slice(outputs, boxes, index, n)?,
                image_slice(outputs, scores, index, n)?,
                image_slice(outputs, classes, index, n)?,
                count,
                *class_offset,
                m.labels.len(),
                m.score_threshold,
                out,
            );
        }
        DecoderSpec::Yolov8 { output } => {
            decode::yolov8(
                image_slice(outputs, output, index, n)?,
                m.labels.len(),
                m.score_threshold,
                out,
            );
        }
    }
    Ok(())
}

/// Dimensions of a named input or output as declared by the model (-1 =
/// dynamic), or why there are none.
pub(crate) fn declared(
    outlets: &[ort::value::Outlet],
    name: &str,
    what: &str,
) -> Result<Vec<i64>, String> {
    let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        format!("the model has no {what} named {name:?} (it has {names:?})")
    })?;
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            if *ty != TensorElementType::Float32 {
                return Err(format!("{what} {name:?} is {ty:?}, only f32 is supported"));
            }
            Ok(shape.to_vec())
        }
        other => Err(format!("{what} {name:?} is not a tensor: {other:?}")),
    }
}

/// `[?, 3, 416, 416]` for expected dimensions (`?` = any).
fn show_dims(want: &[Option<i64>]) -> String {
    let dims: Vec<String> = want
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

/// `want` matches `got` where both are known; -1 in `got` is dynamic.
pub(crate) fn dims_match(got: &[i64], want: &[Option<i64>]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| *g < 0 || w.is_none_or(|w| *g == w))
}

/// Checks the model's input and outputs against the manifest; returns
/// whether the batch dimension is dynamic.
fn check_model(m: &Manifest, session: &Session) -> Result<bool, String> {
    let input = declared(session.inputs(), &m.input.name, "input")?;
    let (w, h) = (m.input.width as i64, m.input.height as i64);
    let want = match m.input.layout {
        Layout::Nchw => [None, Some(3), Some(h), Some(w)],
        Layout::Nhwc => [None, Some(h), Some(w), Some(3)],
    };
    if !dims_match(&input, &want) {
        return Err(format!(
            "input {:?} is {input:?}, the manifest says {} ({}x{}, layout {:?})",
            m.input.name,
            show_dims(&want),
            m.input.width,
            m.input.height,
            m.input.layout
        ));
    }
    let dynamic_batch = input[0] < 0;
    let classes = m.labels.len() as i64;
    let outputs = session.outputs();
    let check = |name: &str, want: &[Option<i64>]| -> Result<(), String> {
        let got = declared(outputs, name, "output")?;
        if dims_match(&got, want) {
            Ok(())
        } else {
            Err(format!(
                "output {name:?} is {got:?}, the {} decoder expects {}",
                m.decoder.kind(),
                show_dims(want)
            ))
        }
    };
    match &m.decoder {
        DecoderSpec::Gfl {
            strides,
            reg_max,
            scores,
            boxes,
            ..
        } => {
            for ((&s, sc), bx) in strides.iter().zip(scores).zip(boxes) {
                let cells = (w / s as i64) * (h / s as i64);
                check(sc, &[None, Some(cells), Some(classes)])?;
                check(bx, &[None, Some(cells), Some(4 * (*reg_max as i64 + 1))])?;
            }
        }
        DecoderSpec::Ssd {
            boxes,
            scores,
            classes: class_ids,
            count,
            ..
        } => {
            check(boxes, &[None, None, Some(4)])?;
            check(scores, &[None, None])?;
            check(class_ids, &[None, None])?;
            if let Some(count) = count {
                check(count, &[None])?;
            }
        }
        DecoderSpec::Yolov8 { output } => check(output, &[None, Some(4 + classes), None])?,
    }
    Ok(dynamic_batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_detector_can_move_to_its_inference_thread() {
        fn send<T: Send>() {}
        send::<Detector>();
    }

    #[test]
    fn dims_match_treats_minus_one_as_dynamic() {
        assert_eq!(show_dims(&[None, Some(3)]), "[?, 3]");
        assert!(dims_match(
            &[-1, 3, 416, 416],
            &[None, Some(3), Some(416), Some(416)]
        ));
        assert!(dims_match(
            &[1, 3, -1, -1],
            &[None, Some(3), Some(416), Some(416)]
        ));
        assert!(!dims_match(
            &[1, 3, 320, 320],
            &[None, Some(3), Some(416), Some(416)]
        ));
        assert!(!dims_match(
            &[1, 3, 416],
            &[None, Some(3), Some(416), Some(416)]
        ));
    }
}
