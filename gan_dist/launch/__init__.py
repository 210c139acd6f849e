"""`gan-dist launch`: the same training job on this machine, across nodes, or on SLURM.

`local.py` builds the one Accelerate command every rank is started with; `slurm.py` renders
it into an sbatch script (template in `slurm/`) that survives preemption by requeueing.
"""
