"""What a run directory holds, and how it is written and read back.

  layout         `Workdir`: one run (or sweep) directory and every file name in it;
                 reads and writes its small JSON files
  checkpointing  Orbax checkpoints: `<workdir>/checkpoints/<step>/{state,meta}`
  records        where metrics go: metrics.jsonl, TensorBoard events, the progress line
  provenance     what made a result: the code, the library versions and the command
  workdirs       reading finished (or running) run and sweep workdirs for the report

Modules receive a `Workdir` (`Workdir.of(path)`), not a path string. Every path goes
through `hfc_jax.fileio` (local or gs://). Only `checkpointing` imports JAX on import
(`records` does when it writes), so the report reads workdirs without it.
"""

from hfc_jax.workdir.layout import Workdir  # noqa: F401  (the package's one type)
