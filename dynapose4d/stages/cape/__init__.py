"""The cape stage: `config` (its settings; no Lightning), `module` (the LightningModule) and `stage` (`run`:
inputs, trainer, outputs)."""
