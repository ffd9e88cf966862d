"""What a diffusion model is here: the Baseline and LIFT UNets (`models`), the noise schedule and
the training losses (`diffusion`), DDIM sampling (`sampling`) and the image sets (`data`).

May import: explore.core.
"""
