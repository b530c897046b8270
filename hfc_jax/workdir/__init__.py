"""What a run directory holds, and how it is written and read back.

  checkpointing  Orbax checkpoints: `<workdir>/checkpoints/<step>/{state,meta}`
  records        where metrics go: metrics.jsonl, TensorBoard events, the progress line
  provenance     provenance.jsonl: the code, the library versions and the command
  workdirs       the file names of a workdir, and reading finished (or running) run
                 and sweep workdirs

Every path goes through `hfc_jax.fileio` (local or gs://). Only `checkpointing` imports
JAX on import (`records` does when it writes), so the report reads workdirs without it.
"""
