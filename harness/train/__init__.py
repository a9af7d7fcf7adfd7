"""Training at toy scale: a byte-level corpus, training and evaluation loops, checkpoints in the decoder's own
format, conversions of a trained checkpoint, and statistics over seeds (``attnbench train``, ``attnbench convert``)."""
