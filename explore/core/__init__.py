"""The ground floor: errors a user can fix (`errors`), device resolution (`devices`), atomic file
writes, OS locks and disk-space facts (`files`), the Hydra/OmegaConf glue that composes and
builds configs (`config`), and typed settings from config nodes (`settings`).

May import: nothing of explore outside explore.core.
"""
