"""One LightningModule per stage (thin: losses + steps), and each stage's `run(ctx, cfg)` entry."""
