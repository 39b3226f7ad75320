"""The stages of the pipeline, one module each: train (and finetune), prune, compress,
evaluate, inspect (info). Each reads checkpoint files, calls the in-memory core
(prunecli.surgery.Pruner, prunecli.engine.Trainer) and writes a checkpoint file;
`checkpoints` holds the load -> rebuild sequence they share.
"""
