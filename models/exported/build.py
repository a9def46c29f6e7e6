#!/usr/bin/env python3
"""Small ONNX models with the features exporters (PyTorch, tf2onnx) put in
real-world files, built with onnx's helper, and their onnxruntime outputs.

- symbolic_squeeze.onnx: symbolic dimensions feeding Squeeze and a Reshape
  whose shape is computed from Shape/Gather (tract cannot analyse it until
  `pack --input-shape x=1,1,16`);
- if_mode.onnx: an `If` on a scalar int64 input whose branches give
  different shapes (`pack --constant mode=1` folds it away);
- int64_scalar.onnx: an int64 scalar input (a sample rate) used in the math;
- fp16_weights.onnx: half-precision weights cast to float, as exports with
  `keep_io_types` make them.

Run: python3 models/exported/build.py (needs onnx, onnxruntime, numpy).
The outputs are committed; tests/exported.rs compares every backend with them.
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OPSET = [helper.make_opsetid("", 17)]
rng = np.random.default_rng(7)


def save(model, name, feeds):
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(HERE, f"{name}.onnx")
    onnx.save(model, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    for k, v in feeds.items():
        np.save(os.path.join(HERE, f"{name}.in.{k}.npy"), v)
    for o, v in zip(sess.get_outputs(), outs):
        np.save(os.path.join(HERE, f"{name}.out.{o.name}.npy"), v)
    print(name, {o.name: v.shape for o, v in zip(sess.get_outputs(), outs)})


def symbolic_squeeze():
    w = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w")
    four = numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "two_two")
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Squeeze", ["x", "axes"], ["sq"], name="squeeze_channel"),
        helper.make_node("MatMul", ["sq", "w"], ["mm"], name="project"),
        helper.make_node("Shape", ["x"], ["shape"], name="shape_of_x"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="batch_dim", axis=0),
        helper.make_node("Concat", ["batch", "two_two"], ["new_shape"], name="target_shape", axis=0),
        helper.make_node("Reshape", ["mm", "new_shape"], ["y"], name="reshape_out"),
    ]
    graph = helper.make_graph(
        nodes,
        "symbolic_squeeze",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "channels", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2])],
        initializer=[w, four, zero, axes],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeml-test")
    save(model, "symbolic_squeeze", {"x": rng.standard_normal((1, 1, 16)).astype(np.float32)})


def if_mode():
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    to24 = numpy_helper.from_array(np.array([2, 4], dtype=np.int64), "to24")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    then_g = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Reshape", ["doubled", "to24"], ["then_y"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_y", TensorProto.FLOAT, [2, 4])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_y"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_y", TensorProto.FLOAT, [1, 8])],
    )
    nodes = [
        helper.make_node("Equal", ["mode", "one"], ["is_one"], name="mode_is_one"),
        helper.make_node(
            "If", ["is_one"], ["y"], name="branch_on_mode", then_branch=then_g, else_branch=else_g
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "if_mode",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("mode", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", "cols"])],
        initializer=[one, to24, two],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeml-test")
    save(
        model,
        "if_mode",
        {"x": rng.standard_normal((1, 8)).astype(np.float32), "mode": np.array(1, dtype=np.int64)},
    )


def int64_scalar():
    ref = numpy_helper.from_array(np.array(16000.0, dtype=np.float32), "ref_rate")
    nodes = [
        helper.make_node("Cast", ["sample_rate"], ["rate_f"], name="rate_to_float", to=TensorProto.FLOAT),
        helper.make_node("Div", ["rate_f", "ref_rate"], ["scale"], name="rate_scale"),
        helper.make_node("Mul", ["x", "scale"], ["y"], name="scale_x"),
    ]
    graph = helper.make_graph(
        nodes,
        "int64_scalar",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("sample_rate", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        initializer=[ref],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeml-test")
    save(
        model,
        "int64_scalar",
        {
            "x": rng.standard_normal((1, 8)).astype(np.float32),
            "sample_rate": np.array(8000, dtype=np.int64),
        },
    )


def fp16_weights():
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float16), "w16")
    b = numpy_helper.from_array(rng.standard_normal((4,)).astype(np.float16), "b16")
    nodes = [
        helper.make_node("Cast", ["w16"], ["w"], name="weights_to_float", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["b16"], ["b"], name="bias_to_float", to=TensorProto.FLOAT),
        helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="dense"),
    ]
    graph = helper.make_graph(
        nodes,
        "fp16_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[w, b],
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeml-test")
    save(model, "fp16_weights", {"x": rng.standard_normal((1, 8)).astype(np.float32)})


if __name__ == "__main__":
    symbolic_squeeze()
    if_mode()
    int64_scalar()
    fp16_weights()
