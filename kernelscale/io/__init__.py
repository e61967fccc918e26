"""Checkpoint I/O: everything kernelscale reads from or writes to disk (DESIGN §6, §8).

- :mod:`kernelscale.io.safetensors_io`: the validating safetensors reader and streaming writer.
- :mod:`kernelscale.io.discovery`: what a path means as a checkpoint (one file, a shard index, a
  model folder walked with its subfolders), the one discovery convert, inspect, verify and
  ``nn.load`` share.
- :mod:`kernelscale.io.checkpoint`: a converted checkpoint's headers and manifest, merged over its files.
- :mod:`kernelscale.io.output`: OUT, written into a temp entry and committed by rename.
- :mod:`kernelscale.io.sink`: the file object the streaming writer writes into (O_DIRECT where possible).

Nothing here resizes a tensor or plans a change. The modules import :mod:`kernelscale.errors`,
:mod:`kernelscale.dtypes`, :mod:`kernelscale.text` and each other; :mod:`kernelscale.io.checkpoint`
also reads the manifest format version from :mod:`kernelscale.plan`. Nothing in
:mod:`kernelscale.io` imports the converter, the command line or the nn adapter.
"""
