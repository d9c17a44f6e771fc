"""Training and search: Lightning training, Optuna search, and the data they read.

The map (one job per module):

- ``api``: the public entry points (``tbkit.train``, ``tbkit.search``, ``memorise`` under ``overfit``)
- ``config``: ``TrainConfig`` / ``SearchConfig``, built from the public keywords
- ``fit``: the fit loop that drives ``lightning.pytorch.Trainer`` (train, search trials, baseline)
- ``lightning_module`` / ``history``: the LightningModule and sampler / the metrics callback
- ``run_setup``, ``precision``, ``distributed``: device (``tbkit.devices``), precision, DDP plan
- ``data``, ``evaluation``, ``schedule``: blocks and the loss, validation loss, the LR schedule
- ``search``, ``workers``: the Optuna study and how workers share it
- ``copies``, ``quiet``, ``dependencies``, ``plots``, ``memorise``: as named
"""
