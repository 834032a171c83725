"""The model zoo: four small nets with BatchNorm, trained on scikit-learn data sets and cached by weights hash.

architectures        the four architectures (ZooSpec: task, input and output names)
data                 the data sets and their fixed train/held-out split
training             the training loop and held-out evaluation
cache                trained weights on disk, keyed by the training recipe
catalog              ZOO and trained(NAME): a zoo net trained or read from the cache
default_repository   every zoo model folded and exported (bnfold build-default)
"""
