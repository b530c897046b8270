"""The lifecycle of a training run, around `hfc_jax.train`'s loop: start, stop, go on.

  sweep        one config, several runs, each in a sub-workdir; the report at the end
  group        a run-parallel group: several runs in one vmapped step, a workdir each
  resume       where a rerun continues, what may change, and the record of what did
  lock         one run per workdir: `<workdir>/.lock`
  preemption   SIGTERM: every host stops at the same step, with a checkpoint there
  progress     the host's view of an epoch in flight: running sums, the divergence check

What these read and write in the run directory lives in `hfc_jax.workdir`.
"""
