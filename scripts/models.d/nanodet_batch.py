"""Makes the converted NanoDet-g graph accept any batch size.

tf2onnx keeps the TF.js graph's fixed batch of 1: the input is [1,3,416,416]
and the six heads' Reshape ops get their target shape from a small subgraph
that builds [1, C, H*W] out of constants. This rewrites each head Reshape to
the constant shape [0, C, -1] (0 = copy the batch dimension from the input),
drops the now-unused shape subgraph, and marks dimension 0 of the input and
the outputs as the symbolic "batch". The weights are untouched.

    python nanodet_batch.py in.onnx out.onnx
"""
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

src, dst = sys.argv[1:3]
model = onnx.load(src)
graph = model.graph

# Channel count of each Reshape's data input, from the Split that feeds it
# (80 class scores, 44 box bins) or from the Sigmoid over the scores.
shape_info = onnx.shape_inference.infer_shapes(model).graph.value_info
dims = {
    v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in shape_info
}
patched = 0
for node in graph.node:
    if node.op_type != "Reshape":
        continue
    data_dims = dims.get(node.input[0])
    if not data_dims or len(data_dims) != 4 or data_dims[0] != 1:
        sys.exit(f"unexpected Reshape input {node.input[0]}: {data_dims}")
    name = f"{node.name}_batch_shape"
    const = np.array([0, data_dims[1], -1], dtype=np.int64)
    graph.initializer.append(numpy_helper.from_array(const, name))
    node.input[1] = name
    patched += 1
if patched != 6:
    sys.exit(f"expected 6 head Reshapes, patched {patched}")

# Drop nodes whose outputs nobody reads any more (the shape subgraph).
while True:
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if not any(o in used for o in n.output)]
    if not dead:
        break
    for n in dead:
        graph.node.remove(n)
used = {i for n in graph.node for i in n.input}
for init in [i for i in graph.initializer if i.name not in used]:
    graph.initializer.remove(init)

for value in list(graph.input) + list(graph.output):
    dim0 = value.type.tensor_type.shape.dim[0]
    dim0.ClearField("dim_value")
    dim0.dim_param = "batch"
del graph.value_info[:]
onnx.checker.check_model(model)
onnx.save(model, dst)
print(f"nanodet_batch: {patched} Reshapes made batch-agnostic -> {dst}")
