"""The stages of the pipeline (train, prune, compress, finetune, evaluate): each reads a
checkpoint file, calls the in-memory core, and writes a checkpoint file."""
