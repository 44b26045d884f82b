//! Writing the learned models as ONNX (opset 13) with the prost types
//! generated from the vendored official `onnx.proto` (`collector/proto/`).
//!
//! Two graphs, both with a dynamic batch dimension `N`:
//! * verifier: `features [N,F] f32 -> Gemm(W [F,1], b [1]) -> Sigmoid ->
//!   probability [N,1]`; any standardisation is already folded into `W`, `b`;
//! * scene: `embedding [N,D] f32 -> Sub(mean [D]) -> MatMul(P [D,D]) ->
//!   Mul(centred) -> ReduceSum(axes=[1], keepdims=0) -> Sqrt -> distance [N]`,
//!   the Mahalanobis distance with `P` the (regularised) inverse covariance.

use prost::Message;

/// The generated ONNX protobuf types (package `onnx`).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

use proto::{
    tensor_proto::DataType, tensor_shape_proto::dimension, AttributeProto, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// The opset every model we write declares.
pub const OPSET: i64 = 13;
/// ONNX IR version 7 is the one that goes with opset 13.
const IR_VERSION: i64 = 7;

pub const VERIFIER_INPUT: &str = "features";
pub const VERIFIER_OUTPUT: &str = "probability";
pub const SCENE_INPUT: &str = "embedding";
pub const SCENE_OUTPUT: &str = "distance";

fn tensor(name: &str, dims: &[i64], values: Vec<f32>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(DataType::Float as i32),
        float_data: values,
        ..Default::default()
    }
}

fn int_tensor(name: &str, values: Vec<i64>) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: vec![values.len() as i64],
        data_type: Some(DataType::Int64 as i32),
        int64_data: values,
        ..Default::default()
    }
}

/// A float tensor value with shape `dims`; `None` = the symbolic batch `N`.
fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| proto::tensor_shape_proto::Dimension {
            value: Some(match d {
                Some(v) => dimension::Value::DimValue(*v),
                None => dimension::Value::DimParam("N".into()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(proto::type_proto::Value::TensorType(
                proto::type_proto::Tensor {
                    elem_type: Some(DataType::Float as i32),
                    shape: Some(TensorShapeProto { dim }),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str, attributes: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(format!("{op}_{output}")),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute: attributes,
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(proto::attribute_proto::AttributeType::Int as i32),
        i: Some(value),
        ..Default::default()
    }
}

fn model(graph: GraphProto, doc: &str) -> Vec<u8> {
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        producer_name: Some("camfleet-collector".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(doc.into()),
        graph: Some(graph),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Logistic regression: `probability = sigmoid(features · weights + bias)`.
pub fn verifier_model(weights: &[f32], bias: f32) -> Vec<u8> {
    let f = weights.len() as i64;
    let graph = GraphProto {
        name: Some("camfleet_verifier".into()),
        node: vec![
            node("Gemm", &[VERIFIER_INPUT, "W", "B"], "logit", vec![]),
            node("Sigmoid", &["logit"], VERIFIER_OUTPUT, vec![]),
        ],
        initializer: vec![
            tensor("W", &[f, 1], weights.to_vec()),
            tensor("B", &[1], vec![bias]),
        ],
        input: vec![value_info(VERIFIER_INPUT, &[None, Some(f)])],
        output: vec![value_info(VERIFIER_OUTPUT, &[None, Some(1)])],
        ..Default::default()
    };
    model(graph, "camfleet detection verifier (logistic regression)")
}

/// Mahalanobis distance to `mean` under `precision` (row-major `D x D`).
pub fn scene_model(mean: &[f32], precision: &[f32]) -> Vec<u8> {
    let d = mean.len() as i64;
    assert_eq!(
        precision.len(),
        mean.len() * mean.len(),
        "precision is D x D"
    );
    let graph = GraphProto {
        name: Some("camfleet_scene".into()),
        node: vec![
            node("Sub", &[SCENE_INPUT, "mean"], "centred", vec![]),
            node("MatMul", &["centred", "precision"], "projected", vec![]),
            node("Mul", &["projected", "centred"], "terms", vec![]),
            node(
                "ReduceSum",
                &["terms", "axes"],
                "squared",
                vec![int_attribute("keepdims", 0)],
            ),
            node("Sqrt", &["squared"], SCENE_OUTPUT, vec![]),
        ],
        initializer: vec![
            tensor("mean", &[d], mean.to_vec()),
            tensor("precision", &[d, d], precision.to_vec()),
            int_tensor("axes", vec![1]),
        ],
        input: vec![value_info(SCENE_INPUT, &[None, Some(d)])],
        output: vec![value_info(SCENE_OUTPUT, &[None])],
        ..Default::default()
    };
    model(graph, "camfleet scene model (Mahalanobis distance)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_models_decode_with_the_declared_opset_and_io() {
        let bytes = verifier_model(&[0.5, -1.0, 2.0], 0.25);
        let m = ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(m.opset_import[0].version, Some(13));
        let g = m.graph.unwrap();
        assert_eq!(g.input[0].name.as_deref(), Some(VERIFIER_INPUT));
        assert_eq!(g.output[0].name.as_deref(), Some(VERIFIER_OUTPUT));
        assert_eq!(g.initializer[0].float_data, [0.5, -1.0, 2.0]);

        let bytes = scene_model(&[0.0, 1.0], &[1.0, 0.0, 0.0, 1.0]);
        let g = ModelProto::decode(bytes.as_slice()).unwrap().graph.unwrap();
        let ops: Vec<_> = g.node.iter().map(|n| n.op_type.clone().unwrap()).collect();
        assert_eq!(ops, ["Sub", "MatMul", "Mul", "ReduceSum", "Sqrt"]);
    }
}
