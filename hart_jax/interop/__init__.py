"""Official HART checkpoint folders <-> hart_jax variables, both directions."""
