//! Generates the ONNX protobuf types (`learn::onnx`) from the vendored
//! `proto/onnx.proto` with protox: pure Rust, so no `protoc` is needed on a
//! build machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["proto/onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
