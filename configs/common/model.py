"""The model block (``config.model``): Table 3 of the paper, shared by every survey.

``kind`` 'rcnn' is the image-sequence RCNN (Sec. 3.2, Fig. 4); 'lc' the light-curve
classifier of Sec. 3.3 (optimal photometry, Naylor 1998, then Table 3's last three rows).
Table 3: 64 filters, 3 convolutions per block, 2 blocks, a dense layer of 1024 with dropout,
an LSTM of 512 units.
"""

import ml_collections


def model_block(kind='rcnn'):
  """``config.model`` for ``kind`` 'rcnn' or 'lc'."""
  m = ml_collections.ConfigDict()
  m.kind = kind  # 'rcnn' | 'lc'
  m.filters = 64
  m.convs_per_block = 3
  m.num_blocks = 2
  m.dense = 1024
  m.dropout = 0.5
  m.lstm_size = 512
  # Running batch-norm statistics: Keras' default, as the paper. Short runs need a shorter
  # memory: after 400 steps 0.99 still weighs the initial (0, 1) statistics by 2 %, and
  # evaluation uses these running statistics.
  m.bn_momentum = 0.99
  # Inputs (eq. 4 counts, or photometry) pass through asinh(x / scale) before the first batch
  # norm; 0 feeds them raw, as Table 3 reads. Raw pixels span -30 to 50,000 ADU: one saturated
  # star sets a batch's variance, so the running variance (used at evaluation) ends hundreds
  # of times the typical batch's and the RCNN sees squashed inputs (measured: 0.16 accuracy in
  # evaluation mode where batch statistics gave 0.42). asinh is linear within the noise (~10 ADU)
  # and logarithmic beyond, so its statistics are stable.
  m.input_asinh_scale = 10.0
  m.conv_impl = 'auto'  # 'auto' picks the fastest formulation for the backend
  # Image-encoder layers run over the batch this many steps (stamps) at a time, each fused with
  # the batch norm, ReLU and pool before it, so their activations stay in the CPU's caches:
  # -1 picks by backend (16 on the CPU, the whole batch on a GPU), 0 turns it off.
  m.encoder_chunk = -1
  m.dtype = 'float32'
  return m
