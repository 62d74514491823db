"""dpgan_tf: differentially private conditional GANs in TensorFlow/Keras.

Importing the package turns TensorFlow's oneDNN CPU kernels on for x86 hosts
(unless TF_ENABLE_ONEDNN_OPTS is already set): TensorFlow 2.15 enables them
by default only on CPUs with AVX-512 VNNI/BF16, yet they are faster on AVX2
ones too (docs/performance.md). TensorFlow reads the variable when it is first
imported, so train.py and eval.py import dpgan_tf before TensorFlow. The
critic never runs on an empty batch, which oneDNN's convolutions reject.
"""

import os
import platform

# Where the default is set; elsewhere TensorFlow's own default stands.
X86_HOST = platform.machine().lower() in ('x86_64', 'amd64')

if X86_HOST:
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
