"""The experiments, one `get_config()` each, installed as
`diffusion_distillation.configs` (setup.cfg maps this folder there).

`python -m diffusion_distillation.main --config=NAME` takes a config by name
(`dd.config_names()` lists them) as well as by path.
"""
