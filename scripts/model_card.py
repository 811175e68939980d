"""Writes a shipped model's MODEL_CARD.md from the measured files (no number typed by hand).

    python scripts/model_card.py pretrained/hits2015_rcnn experiments/hits2015_rcnn/rcnn \
        [--finetuned EXP/rcnn_ft/finetune.json --kfold EXP/kfold/kfold.json]
        [--previous experiments/long/rcnn] [--weaknesses EXP/weaknesses.md] [--compute "..."]
        [--dev_choices "..."]

``--previous`` is the evaluation folder of the model shipped before (its row is shown beside
this one's); ``--dev_choices`` says which choices, if any, looked at the development files
(default: none).

Reads the folder's pretrained.json and config.json, EVAL_DIR/metrics.json (simulated test set,
``evaluate``) and EVAL_DIR/metrics_real.json (``evaluate --real``), the learning curve
(EVAL_DIR/../learning_curve_rcnn.jsonl) and, for a fine-tuned model, finetune.json and the
k-fold estimate.
"""
import argparse
import json
import os

PAPER_FIG8 = {'Supernova': 0.71, 'RRLyrae': 0.89, 'EclipsingBinary': 0.37, 'NonVariable': 1.00}


def _j(path):
  with open(path) as f:
    return json.load(f)


def _fmt(x):
  return f'{x:.2f}'


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('folder')
  ap.add_argument('eval_dir')
  ap.add_argument('--finetuned')
  ap.add_argument('--kfold')
  ap.add_argument('--weaknesses')
  ap.add_argument('--compute', default='')
  ap.add_argument('--title', default='HiTS 2015 RCNN')
  ap.add_argument('--previous')
  ap.add_argument('--dev_choices', default='none: the checkpoint is the best by simulated '
                  'validation loss, the configuration and the simulator were fixed before these '
                  'files were evaluated')
  a = ap.parse_args()
  m = _j(os.path.join(a.folder, 'pretrained.json'))
  cfg = _j(os.path.join(a.folder, 'config.json'))
  real = _j(os.path.join(a.eval_dir, 'metrics_real.json'))
  sim_path = os.path.join(a.eval_dir, 'metrics.json')
  sim = _j(sim_path) if os.path.exists(sim_path) else None
  names = m['class_names']
  t = cfg['train']
  out = [f'# {a.title}: model card', '',
         f'`{os.path.basename(os.path.normpath(a.folder))}/`: the RCNN of Carrasco-Davis et al. '
         '(2018), Table 3, trained by rcnn_jax on its HiTS 2015 (DECam g) simulator only'
         + (', then fine-tuned on real development files (below)' if a.finetuned else '') + '.',
         '', '## What it is', '',
         f'- Classes: {", ".join(names)}; input: sequences of 21 x 21 stamps, n_w = '
         f'{cfg["sim"]["n_w"]}, eq. 4 to the first kept epoch, at most {cfg["sim"]["max_steps"]}'
         ' steps; epochs with seeing above '
         f'{cfg["survey"]["max_seeing_arcsec"]}" or unknown seeing are dropped (`preprocess.py`).',
         f'- {m["num_params"]:,} parameters (Table 3); stored in {m["weights_bytes"] / 1e6:.1f} '
         'MB: weight matrices and kernels in float16, biases, batch-norm parameters and '
         'statistics in float32; no optimizer state.',
         f'- Stored precision: on the {m["precision_check"]["files"]} development files the '
         f'top class at the last step changed for {m["precision_check"]["top_class_changed"]} '
         'files; the largest probability change was '
         f'{m["precision_check"]["max_abs_probability_difference"]:.1e}.',
         f'- Source: step {m["step"]} of `{os.path.relpath(m["source"]["workdir"])}` '
         f'(config variant `{cfg.get("variant")}`, seed {cfg["seed"]}).', '',
         '## Training', '',
         f'- Data: simulated on the fly, {t["num_steps"]:,} steps of {t["batch_size"]} '
         f'sequences ({t["num_steps"] * t["batch_size"]:,} sequences, every one new), Adam at '
         f'{t["learning_rate"]} with schedule `{t.get("schedule", "constant")}` (warm-up '
         f'{t.get("warmup_steps", 0)} steps, final fraction {t.get("final_lr_fraction", 0)}); '
         'best checkpoint by the loss on '
         f'{cfg["eval"]["val_size"]:,} simulated validation sequences.',
         f'- The paper: 30,000 steps of 256 on a GPU; this is '
         f'{100 * t["num_steps"] * t["batch_size"] / (30000 * 256):.1f} % of its sequences.']
  if a.compute:
    out.append(f'- Compute: {a.compute}')
  if a.finetuned:
    ft = _j(a.finetuned)
    per = {}
    for f in ft['files']:
      per[f['label']] = per.get(f['label'], 0) + 1
    out += [f'- Fine-tuning: {ft["finetune"]["num_steps"]} Adam steps at '
            f'{ft["finetune"]["learning_rate"]}, batches of {ft["finetune"]["batch_size"]} '
            f'({ft["finetune"]["real_fraction"]:.0%} real), on '
            + ', '.join(f'{v} {k}' for k, v in sorted(per.items()))
            + ' real development files (the first of each class in sorted order; the '
            f'published version\'s protocol), {ft["seconds"]:.0f} s.']
  out += ['']
  if sim:
    rec = sim['recall_at_confusion_step']
    out += ['## Simulated test set', '',
            f'{sim["num_examples"]:,} simulated test objects (`config.eval.test_seed_offset`), '
            f'step {sim["confusion_step"]}: accuracy **{sim["accuracy_at_confusion_step"]:.3f}**'
            ' (chance 0.143).', '',
            '| ' + ' | '.join(names) + ' |', '|' + '---|' * len(names),
            '| ' + ' | '.join(_fmt(rec[n]) for n in names) + ' |', '']
  r = real['recall_at_step']
  cls = real['classes_present']
  out += ['## Real HiTS development files', '',
          f'{real["num_sequences"]} real sequences (`../shared/data/hits2015/real_*_dev`), the '
          f'paper\'s Sec. 4 protocol (supernovae from {cfg["sim"]["pre_detection"]} epochs '
          f'before their first 5-sigma detection), recall at step {real["confusion_step"]}; one '
          'file is 0.10 of a class of 10, 0.025 of the 40 non-variables.', '',
          '| recall | ' + ' | '.join(f'{c} ({real["count_per_class"][c]})' for c in cls)
          + ' | mean |', '|---|' + '---|' * (len(cls) + 1),
          '| paper Fig. 8 (real HiTS, full GPU training) | '
          + ' | '.join(_fmt(PAPER_FIG8[c]) for c in cls)
          + f' | {_fmt(sum(PAPER_FIG8[c] for c in cls) / len(cls))} |',
          '| this model | ' + ' | '.join(_fmt(r[c]) for c in cls)
          + f' | {_fmt(real["mean_recall"])} |']
  if a.previous:
    pv = _j(os.path.join(a.previous, 'metrics_real.json'))
    ps_path = os.path.join(a.previous, 'metrics.json')
    ps = _j(ps_path) if os.path.exists(ps_path) else None
    out.append(f'| the model shipped before (`{a.previous}`, step {pv.get("checkpoint_step")}'
               + (f'; simulated test accuracy {ps["accuracy_at_confusion_step"]:.3f}' if ps else '')
               + ') | ' + ' | '.join(_fmt(pv['recall_at_step'].get(c, float('nan'))) for c in cls)
               + f' | {_fmt(pv["mean_recall"])} |')
  if a.kfold:
    k = _j(a.kfold)
    out.append('| k-fold estimate of fine-tuning (each file tested by a model that never saw '
               f'it; {k["finetune"]["num_steps"]} steps per fold) | '
               + ' | '.join(_fmt(k['after']['recall_at_step'].get(c, float('nan')))
                            for c in cls) + f' | {_fmt(k["after"]["mean_recall"])} |')
  by_step = real.get('recall_by_step')
  if by_step:
    steps = [s for s in (1, 2, 3, 4, 5, 6, 7, 10, 15, 20) if s <= len(next(iter(by_step.values())))]
    out += ['', 'Early answers: recall by step (a broker asks after a few images; step 1 is the '
            f'first {cfg["sim"]["n_w"]} images; the files still running at each step):', '',
            '| step | ' + ' | '.join(str(s) for s in steps) + ' |',
            '|---|' + '---|' * len(steps)]
    seq = real.get('sequences_by_step', {})
    for c in cls:
      row = by_step[c]
      n = seq.get(c)
      out.append(f'| {c} | ' + ' | '.join(
          _fmt(row[s - 1]) + (f' ({n[s - 1]})' if n and n[s - 1] != real['count_per_class'][c]
                              else '') for s in steps) + ' |')
  out += ['', f'Choices that looked at these files: {a.dev_choices}.']
  counts = real['confusion_counts']
  out += ['', 'Where the real files went (rows: true class; columns: '
          + ', '.join(names) + '):', '']
  for c, row in zip(cls, counts):
    out.append(f'- {c}: ' + ', '.join(f'{names[j]} {v}' for j, v in enumerate(row) if v))
  if a.finetuned:
    ft = _j(a.finetuned)
    used = {f['path'] for f in ft['files']}
    unseen = [f for f in real['files'] if f['path'] not in used]
    per = {}
    for f in unseen:
      ok, n = per.get(f['label'], (0, 0))
      per[f['label']] = (ok + (f['predicted'] == f['label']), n + 1)
    out += ['', f'The fine-tuned model was trained on {len(used)} of these '
            f'{real["num_sequences"]} files ({ft["finetune"]["per_class"]} per class), so its row '
            'is optimistic for them. On the files it never saw: '
            + (', '.join(f'{k} {ok}/{n}' for k, (ok, n) in sorted(per.items())) or 'none')
            + '.' + ('' if a.kfold else ' No k-fold estimate was run for this model; for the '
                     'other classes the only honest estimate is the k-fold of the earlier CPU '
                     'model (`experiments/real_dev/`).')]
  if a.weaknesses:
    with open(a.weaknesses) as f:
      out += ['', '## Known weaknesses', '']
      if a.finetuned:
        out += ['Those of the base model (`hits2015_rcnn`), measured before fine-tuning; how '
                'many of them the fine-tuning removes on unseen real files is not measured '
                'beyond the line above.', '']
      out += [f.read().strip()]
  out += ['', '## Use', '',
          f'    python -m rcnn_jax.predict --workdir {os.path.normpath(a.folder)} '
          '../shared/data/hits2015/real_nonvariable_dev --out predictions.csv', '',
          '`evaluate`, `finetune`, `export` and `Classifier.from_workdir` take the folder '
          'as they take a training workdir.', '']
  with open(os.path.join(a.folder, 'MODEL_CARD.md'), 'w') as f:
    f.write('\n'.join(out))
  print(f'wrote {os.path.join(a.folder, "MODEL_CARD.md")}')


if __name__ == '__main__':
  main()
