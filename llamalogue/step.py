"""The optimizer, the one state builder, the one guarded update, and the sharded, jitted train step.

Every mode builds its train state with `state_layout` and guards its update with `if_finite`;
pre-training and DPO share `train_step`, PPO's update (rl/ppo.py) is its own pure function.
A train state is a plain pytree `{'params', 'opt_state', 'step', ...}`; params are the pure
dict of the NNX model's parameters (`nnx.merge(graphdef, params)` rebuilds the module).
The step is a pure function `(state, batch) -> (state, metrics)` compiled by `jax.jit`
with `in_shardings`/`out_shardings` and the state donated.

A loss function has the signature `loss_fn(params, micro_batch) -> (loss_sum, count)` or
`(loss_sum, count, aux_sums)`: returning sums (not means) makes gradient accumulation
exact: the accumulated gradient is `sum of grads of loss_sum / total count`, whatever the
micro-batching. `aux_sums` (a dict of scalar sums, e.g. DPO's reward accuracies) is
reported per counted item in the step's metrics.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec as P

from llamalogue import model as model_lib
from llamalogue import distributed
from llamalogue import sharding as sharding_lib
from llamalogue.errors import ConfigError

LossFn = Callable[[Any, dict], tuple]


def _with_aux(loss_fn: LossFn):
  """`loss_fn` as `(params, batch) -> (loss_sum, (loss_sum, count, aux_sums))`."""
  def f(params, batch):
    out = loss_fn(params, batch)
    loss_sum, n, aux = out if len(out) == 3 else (*out, {})
    return loss_sum, (loss_sum, n, aux)
  return f


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, params as a pure dict) of an NNX model."""
  graphdef, state = nnx.split(model)
  return graphdef, model_lib.pure_dict(state)


def init_params(model_cfg, seed) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, float32 params as a pure dict) of a freshly initialised Llama.

  `seed` is an int or a PRNG key (`jax.random.key(seed)` gives the same parameters).
  Under jit pass a key as an argument (see `pretrain_layout`).
  """
  return split_model(model_lib.Llama(model_cfg, rngs=nnx.Rngs(params=seed)))


def make_optimizer(opt_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, lr schedule): AdamW with linear warmup + cosine decay (or linear decay), global-norm clipping.

  Weight decay applies to matrices only (not norms, stacked `[layers, D]` or not). `opt_cfg` fields: lr, warmup_steps,
  schedule ('cosine' | 'linear' | 'constant'), min_lr_ratio, b1, b2, eps, weight_decay, grad_clip.
  """
  lr, warmup = opt_cfg.lr, min(opt_cfg.warmup_steps, max(total_steps - 1, 0))
  kind = opt_cfg.get("schedule", "cosine")
  if kind == "cosine":
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1),
                                                  end_value=lr * opt_cfg.get("min_lr_ratio", 0.1))
  elif kind == "linear":
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1))],
        [warmup]) if warmup else optax.linear_schedule(lr, 0.0, max(total_steps, 1))
  elif kind == "constant":
    schedule = optax.constant_schedule(lr)
  else:
    raise ConfigError(f"config.optimizer.schedule: unknown schedule {kind!r} (cosine, linear, constant)")
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(lambda path, x: matrix_dims(path, x) >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(opt_cfg.grad_clip) if opt_cfg.get("grad_clip", 0) else optax.identity(),
      optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps,
                  weight_decay=opt_cfg.weight_decay, mask=decay_mask),
  ), schedule


def matrix_dims(path, x) -> int:
  """The dimensions of one parameter as a layer sees it: the stacked decoder layers' leading axis not counted."""
  stacked = any(getattr(k, "key", None) == "layers" for k in path)
  return x.ndim - 1 if stacked else x.ndim


def global_norm(tree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in float32."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def init_state(params: dict, tx: optax.GradientTransformation, **extra) -> dict:
  """A fresh train state `{'params', 'opt_state', 'step', **extra}` (PPO adds its KL coefficient)."""
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32), **extra}


@dataclasses.dataclass
class StateLayout:
  """Where a train state lives: `target` (ShapeDtypeStructs with shardings: what a checkpoint restores
  onto), `shardings`, and `init()`, which computes the fresh state on the devices (`jitted(*args)`)."""
  target: Any
  shardings: Any
  jitted: Callable[..., Any]
  args: tuple
  mesh: Any = None

  def init(self) -> Any:
    # Loaded parameters sit on one device (of this process): they enter replicated over the mesh.
    replicated = sharding_lib.replicated(self.mesh)
    return self.jitted(*(distributed.to_global(a, replicated) for a in self.args))


def state_layout(make_state: Callable[..., dict], mesh, *args) -> StateLayout:
  """The one state builder of every mode: `make_state(*args) -> state` is pure, and `args` (PRNG keys,
  the loaded parameters of a model to fine-tune) are passed to it as arguments under jit.

  Shapes come from `jax.eval_shape` (nothing allocated), shardings from the rule table
  (llamalogue/sharding.py). A key or parameters closed over instead would become constants that
  XLA folds at compile time (a seed: all the random numbers; parameters: the whole model).
  """
  abstract = jax.eval_shape(make_state, *args)
  shardings = sharding_lib.tree_shardings(abstract, mesh)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return StateLayout(target, shardings, jax.jit(make_state, out_shardings=shardings), args, mesh)


def pretrain_layout(model_cfg, tx, mesh, rng_key: jax.Array) -> StateLayout:
  """A freshly initialised Llama's train state: parameters equal `init_params(model_cfg, seed)` (to float32
  rounding: XLA may fuse the normal transform differently) for `rng_key = jax.random.key(seed)`."""
  return state_layout(lambda key: init_state(init_params(model_cfg, key)[1], tx), mesh, rng_key)


def if_finite(finite: jax.Array, update: Callable[[Any], Any], state: Any) -> Any:
  """The one guarded update: `update(state)` when `finite`, else `state` unchanged (lax.cond), so a step
  with a non-finite loss or gradient never reaches a checkpoint; the loop stops on its `finite=0`."""
  return jax.lax.cond(finite, update, lambda s: s, state)


def _grad_sums(loss_fn: LossFn, params, batch_AxB):
  """(gradient of the summed loss, loss sum, count, aux sums) over the leading micro-batch axis (a
  lax.scan accumulating them when there are several micro-batches)."""
  grad_fn = jax.value_and_grad(_with_aux(loss_fn), has_aux=True)

  def sums(micro):
    (_, (loss_sum, n, aux)), g = grad_fn(params, micro)
    return g, loss_sum, n, aux

  if jax.tree.leaves(batch_AxB)[0].shape[0] == 1:
    return sums(jax.tree.map(lambda x: x[0], batch_AxB))
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                       jax.eval_shape(sums, jax.tree.map(lambda x: x[0], batch_AxB)))
  return jax.lax.scan(lambda acc, micro: (jax.tree.map(jnp.add, acc, sums(micro)), None), zeros, batch_AxB)[0]


def _mean_grads(loss_fn: LossFn, params, batch_AxB):
  """(gradient of the mean loss, loss sum, count, aux sums) over the leading micro-batch axis.

  With one micro-batch there is no loop: a gradient carried through a while loop costs
  XLA:CPU about as much as the backward pass itself on the 135M shape. With several,
  gradients of the summed losses accumulate in a lax.scan and are divided once.
  """
  if jax.tree.leaves(batch_AxB)[0].shape[0] == 1:
    f = _with_aux(loss_fn)

    def mean_loss(p, b):
      loss_sum, aux = f(p, b)
      return loss_sum / jnp.maximum(aux[1], 1.0), aux
    (_, (l_sum, n_sum, aux)), g = jax.value_and_grad(mean_loss, has_aux=True)(
        params, jax.tree.map(lambda x: x[0], batch_AxB))
    return g, l_sum, n_sum, aux
  g_sum, l_sum, n_sum, aux = _grad_sums(loss_fn, params, batch_AxB)
  return jax.tree.map(lambda g: g / jnp.maximum(n_sum, 1.0), g_sum), l_sum, n_sum, aux


def flat_gradient_allreduce(mesh) -> bool:
  """Whether the train step sums its gradients over the batch shards as one flat vector (`_flat_mean_grads`).

  On CPU meshes with the batch split over 2+ devices and the parameters whole on each (fsdp 1):
  XLA:CPU all-reduces a tuple of gradients one buffer after another, which across processes (gloo)
  cost 136 ms a step for the tiny model's 39 gradients against 20 ms for one vector of them all
  (2 processes x 1 device, benchmarks/multihost_overhead.py). GPU and TPU keep XLA's own
  all-reduces, which it overlaps with the rest of the backward pass.
  """
  return (mesh is not None and mesh.devices.flat[0].platform == "cpu" and sharding_lib.batch_shards(mesh) > 1
          and mesh.shape["fsdp"] == 1)


def _flat_mean_grads(loss_fn: LossFn, params, batch_AxB, mesh):
  """`_mean_grads` as each batch shard's sums (its micro-batches accumulated locally), then one `psum` of
  a single flat vector (gradients, loss, count and aux sums together), then the division by the count.
  A loss must be a sum over its batch rows, as every `LossFn` is (DPO's pair slots are shard-local:
  rl/dpo.py `batch_rows` keeps a shard's pairs in its rows)."""
  def local(params, batch_AxB):
    flat, unflatten = ravel_pytree(_grad_sums(loss_fn, params, batch_AxB))
    return unflatten(jax.lax.psum(flat, sharding_lib.BATCH_AXES))

  g_sum, l_sum, n_sum, aux = jax.shard_map(
      local, mesh=mesh, in_specs=(P(), P(None, sharding_lib.BATCH_AXES)), out_specs=P(), check_vma=False)(
          params, batch_AxB)
  return jax.tree.map(lambda g: g / jnp.maximum(n_sum, 1.0), g_sum), l_sum, n_sum, aux


def train_step(loss_fn: LossFn, tx: optax.GradientTransformation, state: dict, batch_AxB: dict, mesh=None):
  """One optimizer step over `A` accumulated micro-batches (every batch leaf is `[A, b, ...]`).

  A non-finite loss or gradient skips the update (lax.cond: the state is returned as
  it was) and reports `finite=0`, so a checkpoint never holds NaNs; the loop stops on it.
  `mesh`: the step's mesh, which picks how gradients are summed over batch shards
  (`flat_gradient_allreduce`); None: XLA's all-reduces (GSPMD), as on GPU and TPU.
  """
  if flat_gradient_allreduce(mesh):
    grads, l_sum, n_sum, aux = _flat_mean_grads(loss_fn, state["params"], batch_AxB, mesh)
  else:
    grads, l_sum, n_sum, aux = _mean_grads(loss_fn, state["params"], batch_AxB)
  loss = l_sum / jnp.maximum(n_sum, 1.0)
  grad_norm = global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(state):
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return dict(state, params=optax.apply_updates(state["params"], updates), opt_state=opt_state,
                step=state["step"] + 1)

  new_state = if_finite(finite, update, state)
  metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": n_sum, "finite": finite,
             **{k: v / jnp.maximum(n_sum, 1.0) for k, v in aux.items()}}
  return new_state, metrics


def jit_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, mesh, state_shardings):
  """`train_step` under jax.jit with explicit shardings and the state donated."""
  return jax.jit(
      lambda state, batch: train_step(loss_fn, tx, state, batch, mesh),
      in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh, leading_dims=1)),
      out_shardings=(state_shardings, sharding_lib.replicated(mesh)),
      donate_argnums=(0,))


def jit_eval_loss(loss_fn: LossFn, mesh, params_shardings):
  """Summed loss and count of one batch `[b, ...]`, sharded like the train step."""
  return jax.jit(loss_fn, in_shardings=(params_shardings, sharding_lib.batch_sharding(mesh)),
                 out_shardings=sharding_lib.replicated(mesh))


def lm_loss(graphdef: nnx.GraphDef) -> LossFn:
  """The next-token loss of model.py bound to a graphdef."""
  return lambda params, batch: model_lib.next_token_loss(params, graphdef, batch)
