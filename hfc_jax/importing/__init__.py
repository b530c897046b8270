"""Published PyTorch CNN weights as workdirs that every analysis mode reads.

`import_weights` (the command is `python -m hfc_jax.import_weights`) reads a PyTorch
state dict (`.pt` / `.pth` through `torch.load(weights_only=True)`, or `.safetensors`
without PyTorch) of one of the architectures of `archs` (RobustBench's WideResNets and
PreAct ResNet-18, the common CIFAR ResNet-18, torchvision's ResNet-18 and -50), maps its
names onto the matching model of `hfc_jax.models` (`names`), converts the arrays
(`convert`: OIHW -> HWIO, linear transposes, BatchNorm running statistics into the
'batchnorm' state), and writes a workdir with a checkpoint that `--config.mode=...`
restores like a trained one (`write`). Input standardisation travels with the model
(`model.input_mean` / `model.input_std`), so the frequency split and the attacks act on
[0, 1] images, before normalisation, as RobustBench evaluates. The guide is
docs/importing.md.
"""

from hfc_jax.importing.importer import import_weights  # noqa: F401
