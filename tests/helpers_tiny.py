"""A scenario small enough that each of its cells measures in about a second: the executors' tests share it."""

TINY = """
name = "tiny"
[model]
d_model = 64
n_layers = 4
d_ff = 128
vocab_size = 97
dtype = "float32"
[[variant]]
name = "H16-MHA"
[[variant]]
name = "H16-MQA-CLA2"
[sweep]
batch_size = [1, 2]
context_len = [32]
backend = ["sdpa"]
[measure]
metrics = ["decode"]
warmup_s = 0.01
min_time_s = 0.01
min_samples = 5
max_samples = 10
"""
