"""dpgan_tf: differentially private conditional GANs in TensorFlow/Keras.

Importing the package (before TensorFlow, as train.py, eval.py and the tests
do) turns TensorFlow's oneDNN CPU kernels off unless TF_ENABLE_ONEDNN_OPTS is
set. TensorFlow 2.15 enables them by default on CPUs with AVX-512 VNNI/BF16,
and there its convolutions fail on an empty batch ("input depth must be
evenly divisible by filter depth"), which Poisson sampling and the split of a
small batch over replicas both produce.
"""

import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
