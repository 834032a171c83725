"""Networks used only by the tests and the benchmarks: reference ResNet/MobileNetV2/DenseNet-style nets and
the BatchNorm variants (helpers to randomise, count and delete BatchNorm modules)."""
