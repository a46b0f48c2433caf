"""Training: config schema (``config``), the accelerate trainer (``trainer``), checkpoints
(``checkpoint``) and the autoencoder stage of the scratch recipe (``autoencoder``)."""
