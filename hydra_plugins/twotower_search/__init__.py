"""Hydra plugin: an Optuna study as the sweeper of `python train.py -m hparams_search=NAME`
(sweeper.OptunaStudySweeper). Hydra loads sweepers only from the `hydra_plugins` namespace."""
