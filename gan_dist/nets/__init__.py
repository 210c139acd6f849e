"""Generators and discriminators, built (`build.py`) from the families a recipe names
(`config/families.py`; the built-in ones are listed in `config/catalogue.py`, their code is
in this package). Every generator is wrapped in `RepairNet` (`repair_net.py`), which feeds
it the damaged image plus the mask and, for inpainting, pastes the known pixels back over
its output, so that what is trained, evaluated and exported is the same function. With
`model.prefill` (biharmonic by default) the holes are first filled by diffusion (see
`core/prefill.py`) and the generator's output is a correction added to that fill. With
`model.noise` the generator also sees a channel of Gaussian noise inside the holes
(`noise.py`), from which it can synthesise grain.
"""
