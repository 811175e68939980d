"""Exports a trained RCNN's per-image streaming update as a ``jax.export`` artifact.

    python -m rcnn_jax.export --workdir W --out DIR [--step S] [--platforms cpu,cuda]
        [--conv_impl xla|rows|auto]
    python -m rcnn_jax.export --format onnx --workdir W --out DIR [--step S]

writes ``DIR/update.jax`` (the serialized function, parameters included) and
``DIR/manifest.json`` (format version, project version, class names, n_w, stamp size, LSTM
size, preprocessing rules, max seeing, the plausibility limits of ``plausibility``, input, state
and output shapes with the symbolic batch dimension: 'b', or '16*k' for ``--conv_impl auto`` on
a CPU, and two SHA-256 digests: ``update_sha256`` of update.jax's bytes, ``fields_sha256`` of
the canonical JSON of ``exported.DIGEST_FIELDS``). ``rcnn_jax.serving.exported`` checks the digests,
loads and runs it without the project's model code (docs/export.md).

The update is ``Classifier.update``'s alert-broker step as one jax function, eq. 4 included:
(state, raw image [B, S, S], MJD, zero point, sky, seeing, active [B]) -> (probs [B, C], state).
An image with seeing above ``config.survey.max_seeing_arcsec`` is skipped (state unchanged, as
if not given), as the simulator drops such epochs; so is one of NaN seeing (conditions not
measured) when ``config.real.drop_unknown_seeing`` (``preprocess``, step 1; the manifest's
``drop_unknown_seeing``). Eq. 4's
reference zero point is the first kept image's; a NaN zero point (either one) means no scaling
and a NaN sky is estimated from the stamp's outer ring as ``realdata.estimate_sky`` does. The
MJD travels as two float32 (hi + lo) so that time gaps keep float64 precision without x64.

``--format onnx`` writes instead ``DIR/step.onnx``, the model's streaming step as one ONNX
graph for onnxruntime (the preparation is its loader's, ``rcnn_jax.serving.onnx_stream``, or a
broker's own, ``examples/broker_onnx.py``), and a manifest of the same kind with its digests
(``serving/export_onnx.py``; docs/export.md says which artifact a broker takes).
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from rcnn_jax.core import outputs
from rcnn_jax.core import utils
from rcnn_jax.serving import export_onnx
from rcnn_jax.serving import exported as exported_lib
from rcnn_jax.serving.classifier import Classifier
from rcnn_jax.serving.export import export_classifier


def _define_flags():
  """Command-line flags, defined only when the module runs as a command."""
  global _WORKDIR, _OUT, _STEP, _PLATFORMS, _CONV, _FORMAT
  _FORMAT = flags.DEFINE_enum('format', 'jax', ['jax', 'onnx'],
                              "'jax': update.jax (jax.export, for JAX); 'onnx': step.onnx (the "
                              'model step as one ONNX graph, for onnxruntime).')
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir of an RCNN.')
  _OUT = flags.DEFINE_string('out', None, 'Folder for update.jax and manifest.json.')
  _STEP = flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best by val loss).')
  _PLATFORMS = flags.DEFINE_list('platforms', ['cpu', 'cuda'],
                                 'Platforms the artifact is lowered for.')
  _CONV = flags.DEFINE_enum('conv_impl', 'xla', ['xla', 'rows', 'auto'],
                            "Convolutions: 'xla' (any platform), 'rows' (CPU matmuls) or "
                            "'auto' (the Classifier's layers on this backend: fastest on a CPU, "
                            'slots a multiple of 16).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError('--workdir and --out are required')
  outputs.check_dir(_OUT.value)  # writable, not inside a model folder: before any compile
  if os.path.exists(os.path.join(_OUT.value, exported_lib.MANIFEST)):
    raise utils.UserError(f'--out {_OUT.value}: already holds an exported artifact, which is '
                          'never overwritten; give a new folder')
  if _FORMAT.value == 'onnx':
    given = [f'--{f}' for f in ('platforms', 'conv_impl') if flags.FLAGS[f].present]
    if given:
      raise utils.UserError(f'{" and ".join(given)}: for --format jax only (the ONNX graph '
                            'runs wherever onnxruntime does, with its own convolutions)')
    export_onnx.import_converter()  # installed, before the model is read
  clf = Classifier.from_workdir(_WORKDIR.value, _STEP.value)
  max_seeing = float(clf.config.survey.max_seeing_arcsec)
  if _FORMAT.value == 'onnx':
    m = export_onnx.export_onnx(clf, _OUT.value, max_seeing)
    size = os.path.getsize(os.path.join(_OUT.value, export_onnx.ARTIFACT))
    print(f'wrote {_OUT.value}: {export_onnx.ARTIFACT} ({size / 1e6:.1f} MB, step '
          f'{clf.checkpoint_step}, opset {m["opset"]}, {m["converter"]}) and '
          f'{export_onnx.MANIFEST}')
    return
  m = export_classifier(clf, _OUT.value, max_seeing, _PLATFORMS.value, _CONV.value)
  size = os.path.getsize(os.path.join(_OUT.value, exported_lib.ARTIFACT))
  print(f'wrote {_OUT.value}: {exported_lib.ARTIFACT} ({size / 1e6:.1f} MB, step '
        f'{clf.checkpoint_step}, platforms {", ".join(m["platforms"])}) and '
        f'{exported_lib.MANIFEST}')


if __name__ == '__main__':
  _define_flags()
  utils.run(main)
