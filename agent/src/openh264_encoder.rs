//! One openh264 `ISVCEncoder`, owned safely, driven through the raw API of
//! `openh264-sys2` (the library built from source by that crate).
//!
//! Why not the `openh264` crate's `Encoder`: its `EncoderConfig` never sets
//! the entropy coding mode (so streams are always CAVLC/Baseline), the number
//! of reference frames or the profile, and it initialises lazily on the first
//! frame, so a bad setting only shows up then. Here the caller fills a whole
//! `SEncParamExt` (starting from openh264's own defaults) and the encoder is
//! initialised at once.

use openh264_sys2::{
    source::APILoader, ISVCEncoder, SEncParamExt, SFrameBSInfo, SSourcePicture,
    ENCODER_OPTION_DATAFORMAT, ENCODER_OPTION_TRACE_LEVEL, WELS_LOG_ERROR,
};
use std::os::raw::{c_int, c_void};
use std::ptr::{null_mut, NonNull};

/// A call into openh264 that did not return success (`cmResultSuccess`).
#[derive(Debug, thiserror::Error)]
#[error("openh264 {call} returned {code}")]
pub struct CallError {
    pub call: &'static str,
    pub code: i64,
}

fn check(call: &'static str, code: c_int) -> Result<(), CallError> {
    if code == 0 {
        Ok(())
    } else {
        Err(CallError {
            call,
            code: code.into(),
        })
    }
}

/// An initialised encoder. Dropping it uninitialises and frees it.
pub struct SvcEncoder {
    /// `ISVCEncoder*` as handed out by `WelsCreateSVCEncoder`: a pointer to
    /// the object whose first word is its vtable.
    encoder: NonNull<ISVCEncoder>,
    /// Boxed: 128 layer infos make it several KiB; openh264 writes into it on
    /// every `EncodeFrame` and the NAL pointers in it stay valid until the
    /// next call.
    info: Box<SFrameBSInfo>,
}

// SAFETY: openh264 encoder instances keep no thread-affine state; one
// instance is only ever used from one thread at a time (`&mut self`).
unsafe impl Send for SvcEncoder {}

/// openh264's defaults for every field (`GetDefaultParams`), for the caller to
/// adjust before [`SvcEncoder::new`].
pub fn default_params() -> Result<SEncParamExt, CallError> {
    let probe = Created::new()?;
    let mut params = SEncParamExt::default();
    // SAFETY: `probe` is a live encoder; `params` is a valid out-pointer.
    check("GetDefaultParams", unsafe {
        (probe.vtable().GetDefaultParams.expect("vtable entry"))(probe.0.as_ptr(), &mut params)
    })?;
    Ok(params)
}

/// A created but not (necessarily) initialised encoder: destroyed on drop.
struct Created(NonNull<ISVCEncoder>);

impl Created {
    fn new() -> Result<Self, CallError> {
        let mut raw: *mut ISVCEncoder = null_mut();
        // SAFETY: out-pointer to a local; the source API has no preconditions.
        check("WelsCreateSVCEncoder", unsafe {
            APILoader::WelsCreateSVCEncoder(&mut raw)
        })?;
        NonNull::new(raw).map(Self).ok_or(CallError {
            call: "WelsCreateSVCEncoder (null encoder)",
            code: 0,
        })
    }

    fn vtable(&self) -> &openh264_sys2::ISVCEncoderVtbl {
        // SAFETY: a created encoder's first word points at its static vtable.
        unsafe { &**self.0.as_ptr() }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        // SAFETY: created by WelsCreateSVCEncoder and destroyed only here.
        unsafe { APILoader::WelsDestroySVCEncoder(self.0.as_ptr()) }
    }
}

impl SvcEncoder {
    /// Creates and initialises an encoder with `params` (openh264 may adjust
    /// some of them, e.g. the level; it rejects what it cannot do).
    pub fn new(params: &SEncParamExt) -> Result<Self, CallError> {
        let created = Created::new()?;
        let vtable = *created.vtable();
        let ptr = created.0.as_ptr();
        // Errors only, set before InitializeExt: openh264 warns on every
        // start that frame skipping is off (on purpose here), while its
        // reason for rejecting parameters is worth seeing.
        let mut level: c_int = WELS_LOG_ERROR as c_int;
        // SAFETY: live encoder; the trace level may be set before init and
        // is read as one int.
        check("SetOption(TRACE_LEVEL)", unsafe {
            (vtable.SetOption.expect("vtable entry"))(
                ptr,
                ENCODER_OPTION_TRACE_LEVEL,
                (&mut level as *mut c_int).cast::<c_void>(),
            )
        })?;
        // SAFETY: live encoder; `params` outlives the call (openh264 copies it).
        check("InitializeExt", unsafe {
            (vtable.InitializeExt.expect("vtable entry"))(ptr, params)
        })?;
        // From here Drop must also uninitialise: hand ownership to `Self`.
        let encoder = created.0;
        std::mem::forget(created);
        let mut this = Self {
            encoder,
            info: Box::default(),
        };
        let mut format: c_int = openh264_sys2::videoFormatI420 as c_int;
        this.set_option(
            ENCODER_OPTION_DATAFORMAT,
            &mut format,
            "SetOption(DATAFORMAT)",
        )?;
        Ok(this)
    }

    fn vtable(&self) -> openh264_sys2::ISVCEncoderVtbl {
        // SAFETY: see `Created::vtable`.
        unsafe { **self.encoder.as_ptr() }
    }

    fn set_option(
        &mut self,
        option: openh264_sys2::ENCODER_OPTION,
        value: &mut c_int,
        call: &'static str,
    ) -> Result<(), CallError> {
        // SAFETY: both options read one int from the pointer.
        check(call, unsafe {
            (self.vtable().SetOption.expect("vtable entry"))(
                self.encoder.as_ptr(),
                option,
                (value as *mut c_int).cast::<c_void>(),
            )
        })
    }

    /// Makes the next frame an IDR.
    pub fn force_idr(&mut self) -> Result<(), CallError> {
        // SAFETY: initialised encoder.
        check("ForceIntraFrame", unsafe {
            (self.vtable().ForceIntraFrame.expect("vtable entry"))(self.encoder.as_ptr(), true)
        })
    }

    /// Encodes one I420 picture (planes with their strides) at `timestamp_ms`
    /// and appends its NAL units (Annex-B) to `out`. Returns openh264's frame
    /// type (`videoFrameTypeIDR`, ...).
    #[allow(clippy::too_many_arguments)]
    pub fn encode(
        &mut self,
        planes: [&[u8]; 3],
        strides: [usize; 3],
        width: u32,
        height: u32,
        timestamp_ms: i64,
        out: &mut Vec<u8>,
    ) -> Result<openh264_sys2::EVideoFrameType, CallError> {
        let (w, h) = (width as usize, height as usize);
        // openh264 reads `stride * rows` bytes of each plane: hold it to that.
        assert!(planes[0].len() >= strides[0] * h && strides[0] >= w);
        assert!(
            w.is_multiple_of(2) && h.is_multiple_of(2),
            "4:2:0 needs even sizes"
        );
        assert!(planes[1].len() >= strides[1] * (h / 2) && strides[1] >= w / 2);
        assert!(planes[2].len() >= strides[2] * (h / 2) && strides[2] >= w / 2);
        let picture = SSourcePicture {
            iColorFormat: openh264_sys2::videoFormatI420 as c_int,
            iStride: [
                strides[0] as c_int,
                strides[1] as c_int,
                strides[2] as c_int,
                0,
            ],
            // openh264 only reads the source picture; its API is not const.
            pData: [
                planes[0].as_ptr().cast_mut(),
                planes[1].as_ptr().cast_mut(),
                planes[2].as_ptr().cast_mut(),
                null_mut(),
            ],
            iPicWidth: width as c_int,
            iPicHeight: height as c_int,
            uiTimeStamp: timestamp_ms,
            bPsnrY: false,
            bPsnrU: false,
            bPsnrV: false,
        };
        // SAFETY: initialised encoder; the planes are large enough (asserted)
        // and outlive the call; `info` is ours.
        check("EncodeFrame", unsafe {
            (self.vtable().EncodeFrame.expect("vtable entry"))(
                self.encoder.as_ptr(),
                &picture,
                &mut *self.info,
            )
        })?;
        let info = &*self.info;
        for layer in &info.sLayerInfo[..info.iLayerNum.max(0) as usize] {
            let count = layer.iNalCount.max(0) as usize;
            if count == 0 {
                continue;
            }
            // SAFETY: openh264 fills `count` NAL lengths and a buffer holding
            // those NALs back to back; both live until the next EncodeFrame.
            let lengths = unsafe { std::slice::from_raw_parts(layer.pNalLengthInByte, count) };
            let total: usize = lengths.iter().map(|&n| n.max(0) as usize).sum();
            let bytes = unsafe { std::slice::from_raw_parts(layer.pBsBuf, total) };
            out.extend_from_slice(bytes);
        }
        Ok(info.eFrameType)
    }
}

impl Drop for SvcEncoder {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, released only here.
        unsafe {
            (self.vtable().Uninitialize.expect("vtable entry"))(self.encoder.as_ptr());
            APILoader::WelsDestroySVCEncoder(self.encoder.as_ptr());
        }
    }
}
