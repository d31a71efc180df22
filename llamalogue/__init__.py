"""llamalogue: a JAX/Flax re-implementation of a communicative BabyLM study."""
