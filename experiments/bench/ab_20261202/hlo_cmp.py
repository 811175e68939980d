"""Lowered text of the paper training step and evaluation step (CPU fused path) of a code tree."""
import hashlib, sys, jax, jax.numpy as jnp
root = sys.argv[1]; sys.path.insert(0, root)
from configs import hits
from rcnn_jax.training import steps as steps_lib
config = hits.get_config(sys.argv[2] if len(sys.argv) > 2 else 'paper')
config.train.batch_size = 32
mesh = steps_lib.make_mesh()
sim, model, tx = steps_lib.build(config)
state = jax.eval_shape(lambda: steps_lib.init_state(config, sim, model, tx, mesh))
step = steps_lib.make_train_step(config, sim, model, tx, mesh)
t = step.lower(state, jax.random.key(0)).as_text()
ev = steps_lib.make_eval_step(config, sim, model, mesh, with_logits=True)
e = ev.lower(state.params, state.batch_stats, jax.random.key(1), jnp.int32(0), jnp.int32(64)).as_text()
import re
strip = lambda s: re.sub(r'loc\(.*?\)|#loc\d*', '', s)  # source locations differ by file line
print(root, 'train', hashlib.sha256(strip(t).encode()).hexdigest()[:16], len(t),
      'eval', hashlib.sha256(strip(e).encode()).hexdigest()[:16], len(e))
