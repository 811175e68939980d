"""Models (layer 2: imports ``core`` only): Table 3's RCNN and Sec. 3.3's light-curve classifier.

``layers`` (the convolution, batch norm over valid steps, the masked LSTM), ``networks`` (the
encoders, the shared recurrent head, the registry ``MODELS`` and ``build_model``), ``kernels/``
(the CPU formulations of the layers, tested equal to the plain ones). The names below are the
package's public interface: ``from rcnn_jax import models; models.build_model(...)``.
"""

from rcnn_jax.models import kernels
from rcnn_jax.models.layers import CONV_IMPLS
from rcnn_jax.models.layers import Conv3x3
from rcnn_jax.models.layers import MaskedBatchNorm
from rcnn_jax.models.layers import MaskedLSTM
from rcnn_jax.models.layers import batch_moments
from rcnn_jax.models.layers import resolve_conv_impl
from rcnn_jax.models.layers import resolve_encoder_chunk
from rcnn_jax.models.networks import DTYPES
from rcnn_jax.models.networks import MODELS
from rcnn_jax.models.networks import RCNN
from rcnn_jax.models.networks import ImageEncoder
from rcnn_jax.models.networks import LightCurveClassifier
from rcnn_jax.models.networks import SequenceClassifier
from rcnn_jax.models.networks import build_model
from rcnn_jax.models.networks import config_fields
from rcnn_jax.models.networks import count_params
from rcnn_jax.models.networks import register
from rcnn_jax.models.networks import table3_param_count

__all__ = [
    'CONV_IMPLS', 'Conv3x3', 'DTYPES', 'ImageEncoder', 'LightCurveClassifier', 'MODELS',
    'MaskedBatchNorm', 'MaskedLSTM', 'RCNN', 'SequenceClassifier', 'batch_moments',
    'build_model', 'config_fields', 'count_params', 'kernels', 'register', 'resolve_conv_impl',
    'resolve_encoder_chunk', 'table3_param_count',
]
