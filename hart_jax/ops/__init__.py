"""Small numerical building blocks shared by the tokenizer and the sampler."""
