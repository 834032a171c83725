"""Build small Keras models with random BatchNorm statistics and convert them with tf2onnx.

Runs in the TensorFlow virtualenv that bench/tf2onnx_check.py creates (TensorFlow, tf2onnx, onnx), never in
bnfold's own environment: it imports neither bnfold nor anything of the project.

Every BatchNormalization layer gets random moving_mean ~ N(0, 1), moving_variance ~ U(0.5, 2),
gamma ~ U(0.5, 2)·(±1) and beta ~ N(0, 1) through set_weights (a default BN is nearly the identity and hides
bugs). Every model has a dynamic batch dimension. For each model and each conversion of VARIANTS it writes
into OUT:

    NAME.VARIANT.onnx   tf2onnx.convert.from_keras(model, input_signature=(None, …), **VARIANTS[VARIANT])
    NAME.input.npy      a batch of 8 random inputs (float32)
    NAME.keras.npy      model(input, training=False): the independent reference
    models.json         the versions; per model its BN layers, input name, files and their opsets

    python bench/tf2onnx_keras.py OUT
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tf2onnx
from keras import layers

BATCH = 8
SEED = 0


def cnn(use_bias: bool, head: str) -> keras.Model:
    """Conv2D-BN-ReLU, DepthwiseConv2D-BN-ReLU, Conv2DTranspose-BN-ReLU, pooling or Flatten, Dense-BN, Dense."""
    image = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=use_bias, name="conv")(image)
    x = layers.BatchNormalization(name="conv_bn")(x)
    x = layers.ReLU(name="conv_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=use_bias, name="depthwise")(x)
    x = layers.BatchNormalization(name="depthwise_bn")(x)
    x = layers.ReLU(name="depthwise_relu")(x)
    x = layers.Conv2DTranspose(6, 3, strides=2, padding="same", use_bias=use_bias, name="deconv")(x)
    x = layers.BatchNormalization(name="deconv_bn")(x)
    x = layers.ReLU(name="deconv_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x) if head == "pool" else layers.Flatten(name="flatten")(x)
    x = layers.Dense(16, use_bias=use_bias, name="dense")(x)
    x = layers.BatchNormalization(name="dense_bn")(x)
    x = layers.Dense(10, name="logits")(x)
    return keras.Model(image, x, name="cnn")


def mlp() -> keras.Model:
    """BN at the input, Dense-BN-ReLU, Dense."""
    features = keras.Input((20,), name="features")
    x = layers.BatchNormalization(name="input_bn")(features)
    x = layers.Dense(32, name="dense")(x)
    x = layers.BatchNormalization(name="dense_bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Dense(5, name="logits")(x)
    return keras.Model(features, x, name="mlp")


def resnet_block() -> keras.Model:
    """Conv-BN-ReLU stem, then Conv-BN-ReLU-Conv-BN + identity shortcut, Add, ReLU, pooling, Dense."""
    image = keras.Input((16, 16, 3), name="image")
    stem = layers.ReLU(name="stem_relu")(
        layers.BatchNormalization(name="stem_bn")(layers.Conv2D(8, 3, padding="same", name="stem")(image))
    )
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv1")(stem)
    x = layers.BatchNormalization(name="block_bn1")(x)
    x = layers.ReLU(name="block_relu1")(x)
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="block_conv2")(x)
    x = layers.BatchNormalization(name="block_bn2")(x)
    x = layers.ReLU(name="block_out")(layers.Add(name="shortcut")([x, stem]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, layers.Dense(10, name="logits")(x), name="resnet_block")


def relu_then_bn() -> keras.Model:
    """BNs no layer can absorb: Conv-ReLU-BN before a zero-padded Conv, and ReLU-BN-ReLU."""
    image = keras.Input((16, 16, 3), name="image")
    x = layers.ReLU(name="relu1")(layers.Conv2D(8, 3, padding="same", name="conv1")(image))
    x = layers.BatchNormalization(name="bn_before_padded_conv")(x)
    x = layers.ReLU(name="relu2")(layers.Conv2D(8, 3, padding="same", name="conv2")(x))
    x = layers.ReLU(name="relu3")(layers.BatchNormalization(name="bn_between_relus")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(image, layers.Dense(10, name="logits")(x), name="relu_then_bn")


VARIANTS: dict[str, dict[str, object]] = {
    "default": {},  # tf2onnx's default opset, all its optimizers
    "opset13": {"opset": 13},
    "noopt": {"optimizers": {}},  # none of tf2onnx's ONNX optimizers (TensorFlow's own constant folding still runs)
}

MODELS: dict[str, Callable[[], keras.Model]] = {
    "cnn": lambda: cnn(use_bias=True, head="pool"),
    "cnn_nobias_flatten": lambda: cnn(use_bias=False, head="flatten"),
    "mlp": mlp,
    "resnet_block": resnet_block,
    "relu_then_bn": relu_then_bn,
}


def randomise_batchnorms(model: keras.Model, rng: np.random.Generator) -> list[str]:
    """Random statistics and affine parameters in every BatchNormalization; their layer names."""
    names = []
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            channels = layer.gamma.shape[0]
            gamma = rng.uniform(0.5, 2.0, channels) * rng.choice([-1.0, 1.0], channels)
            beta = rng.normal(size=channels)
            mean = rng.normal(size=channels)
            variance = rng.uniform(0.5, 2.0, channels)
            layer.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, variance)])
            names.append(layer.name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(SEED)
    rng = np.random.default_rng(SEED)
    described = {}
    for name, build in MODELS.items():
        model = build()
        batchnorms = randomise_batchnorms(model, rng)
        shape = tuple(model.inputs[0].shape[1:])
        batch = rng.normal(size=(BATCH, *shape)).astype(np.float32)
        np.save(args.out / f"{name}.input.npy", batch)
        np.save(args.out / f"{name}.keras.npy", np.asarray(model(batch, training=False)))
        input_name = model.inputs[0].name
        signature = (tf.TensorSpec((None, *shape), tf.float32, name=input_name),)
        files = {}
        for variant, options in VARIANTS.items():
            path = args.out / f"{name}.{variant}.onnx"
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, output_path=str(path), **options)
            version = next(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx"))
            files[variant] = {"file": path.name, "opset": version}
        described[name] = {"batchnorms": batchnorms, "input": input_name, "files": files}
    payload = {
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__},
        "models": described,
    }
    (args.out / "models.json").write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {len(described)} models into {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
