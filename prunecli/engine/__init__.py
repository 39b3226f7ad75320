"""Training engine: config, optimizers and schedules, the epoch loop, distributed setup."""
