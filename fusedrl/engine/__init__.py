"""The lean trainer: config, data, models, algorithms, rollout, rewards, checkpoints and the CLI."""
